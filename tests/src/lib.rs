//! Baton's end-to-end tests live in `tests/tests/`. This library is empty on purpose: the tests
//! drive the real crates (SDK, sample region; later gateway and coordinator processes).
