;; Plant: grows by 5% every 90-210 ticks up to 4x its seed size, then seeds (resets to 1x).
;; Slot 4 = size (read and written).
(module
  (import "baton" "random" (func $random (result i32)))
  (import "baton" "get" (func $get (param i32) (result f32)))
  (import "baton" "set" (func $set (param i32 f32)))
  (import "baton" "set_timer" (func $set_timer (param i32 i32)))
  (global $generation (export "generation") (mut i32) (i32.const 0))
  (func $schedule
    (call $set_timer (i32.const 7) (i32.add (i32.const 90) (i32.rem_u (call $random) (i32.const 120)))))
  (func (export "init") (call $schedule))
  (func (export "on_timer") (param $id i32)
    (local $size f32)
    (local.set $size (f32.mul (call $get (i32.const 4)) (f32.const 1.05)))
    (if (f32.gt (local.get $size) (f32.const 4.0))
      (then
        (local.set $size (f32.const 1.0))
        (global.set $generation (i32.add (global.get $generation) (i32.const 1)))))
    (call $set (i32.const 4) (local.get $size))
    (call $schedule))
)
