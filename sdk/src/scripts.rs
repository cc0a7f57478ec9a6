//! Scripts: WebAssembly modules (run by wasmi) attached to entities, whose whole state is world state.
//!
//! # State that migrates
//! A script's state is its [`Script`] component: the module name, every exported mutable global,
//! its linear memory (trailing zero bytes trimmed, so a script that uses 100 bytes costs 100 bytes),
//! its timers, its random-number state and a revision counter. The wasmi instance is only a cache:
//! after every call the runtime writes the instance's state back into the component (when it
//! changed), and before a call it rebuilds the instance from the component when the revision
//! differs from the one the cached instance produced. So a snapshot taken between ticks holds the
//! complete script state, and a restored script continues exactly where it was.
//!
//! # What a module may do
//! Modules are checked when registered, and refused when their state could not be captured:
//! imported memories, tables or globals; a mutable global that is not exported (wasmi cannot read
//! it back; see `docs/ARCHITECTURE.md`); a mutable global of reference type; a memory that is not
//! exported; instructions that change tables or drop segments; an initial memory over the limit.
//!
//! # Limits
//! Memory per script is capped exactly ([`ScriptConfig::memory_limit_bytes`], default 64 KiB), and
//! so is work: each script gets [`ScriptConfig::fuel_per_tick`] units of fuel per tick across all
//! its calls. A script that traps, runs out of fuel or grows past its memory cap is stopped: its
//! component records the fault, the instance is dropped, and the region keeps running.
//!
//! # Host API (module `baton`)
//! `tick() -> i64`, `random() -> i32`, `get(slot: i32) -> f32`, `set(slot: i32, value: f32)`,
//! `set_timer(id: i32, delay_ticks: i32)`, `cancel_timer(id: i32)`. Slots are game-defined
//! properties of the script's entity, read and written through [`ScriptBindings`]. Exports the
//! runtime calls: `init()` once when attached, `on_timer(id: i32)` when a timer is due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use wasmi::{
    Caller, Config, Engine, Global, Instance, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder,
    TypedFunc, Val,
};
use wasmparser::{ExternalKind, Operator, Parser, Payload, TypeRef, ValType};

use crate::world::{EntityId, World, WorldError};

/// Number of property slots a script can read and write.
pub const PROPERTY_SLOTS: usize = 8;
const WASM_PAGE: usize = 64 * 1024;

/// Script runtime limits.
#[derive(Clone, Copy, Debug)]
pub struct ScriptConfig {
    /// Largest linear memory a script may have, in bytes (rounded down to whole 64 KiB pages, at
    /// least one page when the module has a memory).
    pub memory_limit_bytes: usize,
    /// Fuel (roughly, executed instructions) a script may spend per tick over all its calls.
    pub fuel_per_tick: u64,
    /// Most timers one script may have pending.
    pub max_timers: usize,
}

impl Default for ScriptConfig {
    fn default() -> Self {
        ScriptConfig { memory_limit_bytes: 64 * 1024, fuel_per_tick: 200_000, max_timers: 16 }
    }
}

/// A script on an entity, and its complete state.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, crate::Component)]
#[component(name = "baton.script")]
pub struct Script {
    /// Name of the registered module.
    pub module: String,
    /// Incremented whenever the runtime writes a changed state back.
    pub revision: u64,
    /// Raw bits of every exported mutable global, in the module's export-name order.
    pub globals: Vec<u64>,
    /// Linear memory size in 64 KiB pages (0: the module has no memory).
    pub memory_pages: u32,
    /// Linear memory contents without trailing zero bytes.
    pub memory: Vec<u8>,
    /// Pending timers, ordered by id.
    pub timers: Vec<ScriptTimer>,
    /// State of the script's random-number generator.
    pub rng: u64,
    /// Why the script was stopped, if it was.
    pub fault: Option<String>,
}

/// A pending script timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ScriptTimer {
    /// Script-chosen id, passed to `on_timer`.
    pub id: u32,
    /// Tick at which it fires.
    pub due_tick: u64,
}

/// The game's bridge between script property slots and its components.
pub trait ScriptBindings {
    /// Fills `slots` with the entity's properties before a call.
    fn read(&self, world: &World, entity: EntityId, slots: &mut [f32; PROPERTY_SLOTS]);
    /// Applies a property the script set during a call.
    fn write(&mut self, world: &mut World, entity: EntityId, slot: usize, value: f32);
}

/// Errors from registering modules or attaching scripts.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The module is not valid WebAssembly (or WAT), or wasmi refused it.
    #[error("module {module:?} is invalid: {reason}")]
    InvalidModule {
        /// The module's name.
        module: String,
        /// What is wrong.
        reason: String,
    },
    /// The module does something whose state could not migrate.
    #[error("module {module:?} is refused: {reason}")]
    Refused {
        /// The module's name.
        module: String,
        /// What it does.
        reason: String,
    },
    /// No module is registered under that name.
    #[error("no script module named {0:?}")]
    UnknownModule(String),
    /// The world refused the change.
    #[error(transparent)]
    World(#[from] WorldError),
}

/// Counts from one tick of scripts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScriptTickStats {
    /// Calls made (timers and inits).
    pub calls: u64,
    /// Scripts stopped this tick.
    pub faults: u64,
}

struct ModuleInfo {
    module: Module,
    /// Names under which the mutable globals are exported, one per global, sorted.
    global_exports: Vec<String>,
    has_memory: bool,
}

struct HostState {
    limits: StoreLimits,
    tick: u64,
    rng: u64,
    slots: [f32; PROPERTY_SLOTS],
    written: u8,
    timers: Vec<ScriptTimer>,
    max_timers: usize,
}

struct LiveScript {
    store: Store<HostState>,
    instance: Instance,
    globals: Vec<Global>,
    memory: Option<Memory>,
    on_timer: Option<TypedFunc<i32, ()>>,
    revision: u64,
    fuel_tick: u64,
}

/// Runs the scripts of one region: module registry, instance cache and timer schedule.
pub struct ScriptEngine {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    modules: HashMap<String, ModuleInfo>,
    live: HashMap<EntityId, LiveScript>,
    schedule: BinaryHeap<Reverse<(u64, EntityId, u32)>>,
    config: ScriptConfig,
}

impl ScriptEngine {
    /// An engine with no modules.
    #[must_use]
    pub fn new(config: ScriptConfig) -> ScriptEngine {
        let mut wasm_config = Config::default();
        wasm_config.consume_fuel(true);
        let engine = Engine::new(&wasm_config);
        let mut linker = Linker::new(&engine);
        // A linker with a fixed set of fresh names cannot fail to define them.
        #[allow(clippy::expect_used)]
        define_host_api(&mut linker).expect("host functions are defined once each");
        ScriptEngine {
            engine,
            linker: Arc::new(linker),
            modules: HashMap::new(),
            live: HashMap::new(),
            schedule: BinaryHeap::new(),
            config,
        }
    }

    /// The limits in force.
    #[must_use]
    pub fn config(&self) -> ScriptConfig {
        self.config
    }

    /// Registers a module from WebAssembly binary or text under `name`, after checking that its
    /// whole state can migrate.
    pub fn register_module(&mut self, name: &str, source: &[u8]) -> Result<(), ScriptError> {
        let invalid = |reason: String| ScriptError::InvalidModule { module: name.to_owned(), reason };
        let binary = if source.starts_with(b"\0asm") {
            source.to_vec()
        } else {
            wat::parse_bytes(source).map_err(|error| invalid(error.to_string()))?.into_owned()
        };
        let shape = inspect_module(&binary, self.config.memory_limit_bytes)
            .map_err(|reason| ScriptError::Refused { module: name.to_owned(), reason })?;
        let module = Module::new(&self.engine, &binary).map_err(|error| invalid(error.to_string()))?;
        self.modules.insert(
            name.to_owned(),
            ModuleInfo { module, global_exports: shape.global_exports, has_memory: shape.has_memory },
        );
        Ok(())
    }

    /// Whether a module is registered under `name`.
    #[must_use]
    pub fn has_module(&self, name: &str) -> bool {
        self.modules.contains_key(name)
    }

    /// Attaches a new instance of `module` to `entity` and runs its `init` export.
    pub fn attach(
        &mut self,
        world: &mut World,
        bindings: &mut dyn ScriptBindings,
        entity: EntityId,
        module: &str,
        seed: u64,
    ) -> Result<(), ScriptError> {
        if !self.modules.contains_key(module) {
            return Err(ScriptError::UnknownModule(module.to_owned()));
        }
        let script = Script {
            module: module.to_owned(),
            revision: 0,
            globals: Vec::new(),
            memory_pages: 0,
            memory: Vec::new(),
            timers: Vec::new(),
            rng: seed,
            fault: None,
        };
        world.insert(entity, script)?;
        self.live.remove(&entity);
        self.call(world, bindings, entity, Call::Init);
        Ok(())
    }

    /// Forgets every cached instance and rebuilds the timer schedule from the world. Call after the
    /// world was restored from archives, before the first tick.
    pub fn rebuild(&mut self, world: &World) {
        self.live.clear();
        self.schedule.clear();
        for (entity, script) in world.iter::<Script>() {
            for timer in &script.timers {
                self.schedule.push(Reverse((timer.due_tick, entity, timer.id)));
            }
        }
    }

    /// Number of instances currently cached (observability).
    #[must_use]
    pub fn live_instances(&self) -> usize {
        self.live.len()
    }

    /// Fires every timer due at or before the world's tick, in (due tick, entity, id) order.
    pub fn run_due(&mut self, world: &mut World, bindings: &mut dyn ScriptBindings) -> ScriptTickStats {
        let now = world.tick();
        let mut stats = ScriptTickStats::default();
        while let Some(Reverse(key)) = self.schedule.peek().copied() {
            if key.0 > now {
                break;
            }
            // The same timer may have been scheduled more than once; fire it once.
            while self.schedule.peek().is_some_and(|Reverse(next)| *next == key) {
                self.schedule.pop();
            }
            let (due_tick, entity, id) = key;
            let Some(mut script) = world.get_mut::<Script>(entity) else {
                continue;
            };
            let Some(position) = script.timers.iter().position(|timer| timer.id == id && timer.due_tick == due_tick)
            else {
                continue;
            };
            if script.fault.is_some() {
                continue;
            }
            // Timers are not instance state, so removing one does not invalidate the cached instance.
            script.timers.remove(position);
            stats.calls += 1;
            if !self.call(world, bindings, entity, Call::Timer(id)) {
                stats.faults += 1;
            }
        }
        stats
    }

    /// Calls into a script; returns false if the script faulted (and was stopped).
    fn call(&mut self, world: &mut World, bindings: &mut dyn ScriptBindings, entity: EntityId, call: Call) -> bool {
        let tick = world.tick();
        let Some(script) = world.get::<Script>(entity) else {
            return true;
        };
        if script.fault.is_some() {
            return true;
        }
        let outcome = self.call_inner(world, bindings, entity, call, tick);
        match outcome {
            Ok(()) => true,
            Err(reason) => {
                self.live.remove(&entity);
                crate::events::script_faulted(entity, &reason);
                if let Some(mut script) = world.get_mut::<Script>(entity) {
                    script.fault = Some(reason);
                    script.timers.clear();
                    script.revision += 1;
                }
                false
            }
        }
    }

    fn call_inner(
        &mut self,
        world: &mut World,
        bindings: &mut dyn ScriptBindings,
        entity: EntityId,
        call: Call,
        tick: u64,
    ) -> Result<(), String> {
        let script = world.get::<Script>(entity).ok_or("script vanished")?.clone();
        let module =
            self.modules.get(&script.module).ok_or_else(|| format!("no script module named {:?}", script.module))?;
        let stale = self.live.get(&entity).is_none_or(|live| live.revision != script.revision);
        if stale {
            let live = instantiate(&self.engine, &self.linker, module, &script, self.config)?;
            self.live.insert(entity, live);
        }
        let Some(live) = self.live.get_mut(&entity) else {
            return Err("instance cache lost the script".to_owned());
        };

        let mut slots = [0.0; PROPERTY_SLOTS];
        bindings.read(world, entity, &mut slots);
        {
            let state = live.store.data_mut();
            state.tick = tick;
            state.rng = script.rng;
            state.slots = slots;
            state.written = 0;
            state.timers.clone_from(&script.timers);
        }
        if live.fuel_tick != tick {
            live.store.set_fuel(self.config.fuel_per_tick).map_err(|error| error.to_string())?;
            live.fuel_tick = tick;
        }
        let result = match call {
            Call::Init => match live.instance.get_typed_func::<(), ()>(&live.store, "init") {
                Ok(init) => init.call(&mut live.store, ()),
                Err(_) => Ok(()),
            },
            Call::Timer(id) => match live.on_timer {
                Some(on_timer) => on_timer.call(&mut live.store, id as i32),
                None => Ok(()),
            },
        };
        if let Err(error) = result {
            return Err(if is_out_of_fuel(&error) {
                format!("used more than {} fuel in one tick", self.config.fuel_per_tick)
            } else {
                format!("trapped: {error}")
            });
        }

        // Write the instance's state back into the component, recording a change only if it differs.
        let globals: Vec<u64> = live.globals.iter().map(|global| value_bits(&global.get(&live.store))).collect();
        let (memory_pages, memory) = match live.memory {
            Some(memory) => {
                let data = memory.data(&live.store);
                let used = data.iter().rposition(|byte| *byte != 0).map_or(0, |last| last + 1);
                ((data.len() / WASM_PAGE) as u32, data[..used].to_vec())
            }
            None => (0, Vec::new()),
        };
        let state = live.store.data();
        let (rng, timers, written, slots) = (state.rng, state.timers.clone(), state.written, state.slots);
        for timer in &timers {
            if !script.timers.contains(timer) {
                self.schedule.push(Reverse((timer.due_tick, entity, timer.id)));
            }
        }
        let mut component = world.get_mut::<Script>(entity).ok_or("script vanished")?;
        let unchanged = component.globals == globals
            && component.memory_pages == memory_pages
            && component.memory == memory
            && component.rng == rng
            && component.timers == timers;
        if !unchanged {
            let component = &mut *component;
            component.globals = globals;
            component.memory_pages = memory_pages;
            component.memory = memory;
            component.rng = rng;
            component.timers = timers;
            component.revision += 1;
        }
        live.revision = component.revision;
        for (slot, value) in slots.iter().enumerate() {
            if written & (1 << slot) != 0 {
                bindings.write(world, entity, slot, *value);
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for ScriptEngine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ScriptEngine")
            .field("modules", &self.modules.keys().collect::<Vec<_>>())
            .field("live", &self.live.len())
            .field("scheduled", &self.schedule.len())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Call {
    Init,
    Timer(u32),
}

fn instantiate(
    engine: &Engine,
    linker: &Linker<HostState>,
    module: &ModuleInfo,
    script: &Script,
    config: ScriptConfig,
) -> Result<LiveScript, String> {
    let limits = StoreLimitsBuilder::new()
        .memory_size(config.memory_limit_bytes)
        .memories(1)
        .instances(1)
        .trap_on_grow_failure(true)
        .build();
    let state = HostState {
        limits,
        tick: 0,
        rng: script.rng,
        slots: [0.0; PROPERTY_SLOTS],
        written: 0,
        timers: Vec::new(),
        max_timers: config.max_timers,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limits);
    // The start function and data segments cost fuel too; give them one tick's worth.
    store.set_fuel(config.fuel_per_tick).map_err(|error| error.to_string())?;
    let instance = linker
        .instantiate_and_start(&mut store, &module.module)
        .map_err(|error| format!("instantiation failed: {error}"))?;
    let globals: Vec<Global> = module
        .global_exports
        .iter()
        .map(|name| instance.get_global(&store, name).ok_or_else(|| format!("global {name:?} is not exported")))
        .collect::<Result<_, _>>()?;
    let memory = if module.has_memory { instance.get_memory(&store, "memory") } else { None };
    let on_timer = instance.get_typed_func::<i32, ()>(&store, "on_timer").ok();

    // A script with no saved state yet (just attached) keeps the module's initial state.
    let has_state = script.revision > 0 || !script.globals.is_empty() || script.memory_pages > 0;
    if has_state {
        if script.globals.len() != globals.len() {
            return Err(format!("saved state has {} globals, module exports {}", script.globals.len(), globals.len()));
        }
        for (global, bits) in globals.iter().zip(&script.globals) {
            let value = value_from_bits(&global.get(&store), *bits);
            global.set(&mut store, value).map_err(|error| format!("restoring a global: {error}"))?;
        }
        if let Some(memory) = memory {
            let current = memory.size(&store);
            let wanted = u64::from(script.memory_pages);
            if wanted > current {
                memory.grow(&mut store, wanted - current).map_err(|error| format!("restoring memory: {error}"))?;
            }
            let data = memory.data_mut(&mut store);
            if script.memory.len() > data.len() {
                return Err("saved memory is larger than the memory".to_owned());
            }
            data[..script.memory.len()].copy_from_slice(&script.memory);
            data[script.memory.len()..].fill(0);
        }
    }
    Ok(LiveScript { store, instance, globals, memory, on_timer, revision: script.revision, fuel_tick: u64::MAX })
}

fn is_out_of_fuel(error: &wasmi::Error) -> bool {
    matches!(error.as_trap_code(), Some(wasmi::TrapCode::OutOfFuel))
        || matches!(error.kind(), wasmi::errors::ErrorKind::Fuel(_))
}

fn value_bits(value: &Val) -> u64 {
    match value {
        Val::I32(value) => u64::from(*value as u32),
        Val::I64(value) => *value as u64,
        Val::F32(value) => u64::from(value.to_bits()),
        Val::F64(value) => value.to_bits(),
        // Modules with other mutable global types are refused at registration.
        _ => 0,
    }
}

fn value_from_bits(like: &Val, bits: u64) -> Val {
    match like {
        Val::I32(_) => Val::I32(bits as u32 as i32),
        Val::I64(_) => Val::I64(bits as i64),
        Val::F32(_) => Val::F32(wasmi::F32::from_bits(bits as u32)),
        Val::F64(_) => Val::F64(wasmi::F64::from_bits(bits)),
        other => other.clone(),
    }
}

fn define_host_api(linker: &mut Linker<HostState>) -> Result<(), wasmi::errors::LinkerError> {
    linker.func_wrap("baton", "tick", |caller: Caller<'_, HostState>| -> i64 { caller.data().tick as i64 })?;
    linker.func_wrap("baton", "random", |mut caller: Caller<'_, HostState>| -> i32 {
        let state = caller.data_mut();
        let mut rng = fastrand::Rng::with_seed(state.rng);
        let value = rng.u32(..);
        state.rng = rng.get_seed();
        value as i32
    })?;
    linker.func_wrap("baton", "get", |caller: Caller<'_, HostState>, slot: i32| -> Result<f32, wasmi::Error> {
        let slot = usize::try_from(slot)
            .ok()
            .filter(|slot| *slot < PROPERTY_SLOTS)
            .ok_or_else(|| wasmi::Error::new(format!("get: no slot {slot}")))?;
        Ok(caller.data().slots[slot])
    })?;
    linker.func_wrap(
        "baton",
        "set",
        |mut caller: Caller<'_, HostState>, slot: i32, value: f32| -> Result<(), wasmi::Error> {
            let slot = usize::try_from(slot)
                .ok()
                .filter(|slot| *slot < PROPERTY_SLOTS)
                .ok_or_else(|| wasmi::Error::new(format!("set: no slot {slot}")))?;
            let state = caller.data_mut();
            state.slots[slot] = value;
            state.written |= 1 << slot;
            Ok(())
        },
    )?;
    linker.func_wrap(
        "baton",
        "set_timer",
        |mut caller: Caller<'_, HostState>, id: i32, delay: i32| -> Result<(), wasmi::Error> {
            if delay < 1 {
                return Err(wasmi::Error::new(format!("set_timer: delay {delay} must be at least 1 tick")));
            }
            let state = caller.data_mut();
            let id = id as u32;
            let due_tick = state.tick + delay as u64;
            match state.timers.binary_search_by_key(&id, |timer| timer.id) {
                Ok(position) => state.timers[position].due_tick = due_tick,
                Err(position) => {
                    if state.timers.len() >= state.max_timers {
                        return Err(wasmi::Error::new(format!("set_timer: more than {} timers", state.max_timers)));
                    }
                    state.timers.insert(position, ScriptTimer { id, due_tick });
                }
            }
            Ok(())
        },
    )?;
    linker.func_wrap("baton", "cancel_timer", |mut caller: Caller<'_, HostState>, id: i32| {
        caller.data_mut().timers.retain(|timer| timer.id != id as u32);
    })?;
    Ok(())
}

struct ModuleShape {
    global_exports: Vec<String>,
    has_memory: bool,
}

/// Checks that a module's whole state is capturable (see the module documentation).
fn inspect_module(binary: &[u8], memory_limit_bytes: usize) -> Result<ModuleShape, String> {
    let mut mutable_globals: Vec<(u32, ValType)> = Vec::new();
    let mut exported_globals: HashMap<u32, String> = HashMap::new();
    let mut memories = 0usize;
    let mut memory_exported = false;
    let mut defined_globals = 0u32;
    for payload in Parser::new(0).parse_all(binary) {
        let payload = payload.map_err(|error| error.to_string())?;
        match payload {
            Payload::ImportSection(reader) => {
                for import in reader {
                    let import = import.map_err(|error| error.to_string())?;
                    match import.ty {
                        TypeRef::Func(_) if import.module == "baton" => {}
                        TypeRef::Func(_) => {
                            return Err(format!(
                                "imports {}.{} (only module `baton` exists)",
                                import.module, import.name
                            ));
                        }
                        _ => {
                            return Err(format!(
                                "imports {}.{}: only functions may be imported",
                                import.module, import.name
                            ));
                        }
                    }
                }
            }
            Payload::GlobalSection(reader) => {
                for global in reader {
                    let global = global.map_err(|error| error.to_string())?;
                    if global.ty.mutable {
                        if !matches!(global.ty.content_type, ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64)
                        {
                            return Err(format!("mutable global {defined_globals} is not a number"));
                        }
                        mutable_globals.push((defined_globals, global.ty.content_type));
                    }
                    defined_globals += 1;
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.map_err(|error| error.to_string())?;
                    memories += 1;
                    let initial = usize::try_from(memory.initial).unwrap_or(usize::MAX).saturating_mul(WASM_PAGE);
                    if initial > memory_limit_bytes {
                        return Err(format!(
                            "initial memory of {initial} bytes exceeds the limit of {memory_limit_bytes}"
                        ));
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(|error| error.to_string())?;
                    match export.kind {
                        ExternalKind::Global => {
                            let name = exported_globals.entry(export.index).or_insert_with(|| export.name.to_owned());
                            if export.name < name.as_str() {
                                *name = export.name.to_owned();
                            }
                        }
                        ExternalKind::Memory if export.name == "memory" => memory_exported = true,
                        _ => {}
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut reader = body.get_operators_reader().map_err(|error| error.to_string())?;
                while !reader.eof() {
                    let operator = reader.read().map_err(|error| error.to_string())?;
                    let refused = match operator {
                        Operator::TableSet { .. } => Some("table.set"),
                        Operator::TableGrow { .. } => Some("table.grow"),
                        Operator::TableFill { .. } => Some("table.fill"),
                        Operator::TableCopy { .. } => Some("table.copy"),
                        Operator::TableInit { .. } => Some("table.init"),
                        Operator::ElemDrop { .. } => Some("elem.drop"),
                        Operator::DataDrop { .. } => Some("data.drop"),
                        _ => None,
                    };
                    if let Some(instruction) = refused {
                        return Err(format!("uses {instruction}, whose effect on the instance cannot migrate"));
                    }
                }
            }
            _ => {}
        }
    }
    if memories > 1 {
        return Err("defines more than one memory".to_owned());
    }
    if memories == 1 && !memory_exported {
        return Err("its memory must be exported as \"memory\" so that it can migrate".to_owned());
    }
    let mut global_exports = Vec::with_capacity(mutable_globals.len());
    for (index, _) in &mutable_globals {
        match exported_globals.get(index) {
            Some(name) => global_exports.push(name.clone()),
            None => {
                return Err(format!(
                    "mutable global {index} is not exported; its value could not migrate (export every mutable global)"
                ));
            }
        }
    }
    global_exports.sort();
    Ok(ModuleShape { global_exports, has_memory: memories == 1 })
}
