//! Baton's end-to-end tests live in `tests/tests/`: whole sample regions moved in one process
//! (`region_migration`, `physics_continuation`, `handoff_protocol`, `checkpoint`) and real processes
//! on loopback driven through `baton-harness` (`multiprocess_handoff`, `coordinator_authority`,
//! `gateway_cluster`, `fleet`, `observability`, `example_game`). This library is empty on purpose.
