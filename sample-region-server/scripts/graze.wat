;; Grazing NPC: alternates between standing to graze (60-180 ticks) and ambling (20-60 ticks).
;; Slots: 0 = x, 1 = z (read), 2 = velocity x, 3 = velocity z. Keeps a grazing log in memory.
(module
  (import "baton" "random" (func $random (result i32)))
  (import "baton" "get" (func $get (param i32) (result f32)))
  (import "baton" "set" (func $set (param i32 f32)))
  (import "baton" "set_timer" (func $set_timer (param i32 i32)))
  (memory (export "memory") 1)
  (global $mode (export "mode") (mut i32) (i32.const 0))
  (global $meals (export "meals") (mut i32) (i32.const 0))
  (func $between (param $low i32) (param $span i32) (result i32)
    (i32.add (local.get $low) (i32.rem_u (call $random) (local.get $span))))
  (func (export "init")
    (call $set_timer (i32.const 1) (call $between (i32.const 1) (i32.const 60))))
  (func (export "on_timer") (param $id i32)
    (local $slot i32)
    (if (i32.eqz (global.get $mode))
      (then
        ;; start ambling towards the region's centre, slowly, with some randomness
        (global.set $mode (i32.const 1))
        (call $set (i32.const 2)
          (f32.add (f32.mul (call $get (i32.const 0)) (f32.const -0.004))
                   (f32.sub (f32.convert_i32_u (i32.rem_u (call $random) (i32.const 3))) (f32.const 1))))
        (call $set (i32.const 3)
          (f32.add (f32.mul (call $get (i32.const 1)) (f32.const -0.004))
                   (f32.sub (f32.convert_i32_u (i32.rem_u (call $random) (i32.const 3))) (f32.const 1))))
        (call $set_timer (i32.const 1) (call $between (i32.const 20) (i32.const 40))))
      (else
        ;; stop and graze; remember where in a ring of 64 entries of 8 bytes
        (global.set $mode (i32.const 0))
        (call $set (i32.const 2) (f32.const 0))
        (call $set (i32.const 3) (f32.const 0))
        (local.set $slot (i32.mul (i32.rem_u (global.get $meals) (i32.const 64)) (i32.const 8)))
        (f32.store (local.get $slot) (call $get (i32.const 0)))
        (f32.store (i32.add (local.get $slot) (i32.const 4)) (call $get (i32.const 1)))
        (global.set $meals (i32.add (global.get $meals) (i32.const 1)))
        (call $set_timer (i32.const 1) (call $between (i32.const 60) (i32.const 120))))))
)
