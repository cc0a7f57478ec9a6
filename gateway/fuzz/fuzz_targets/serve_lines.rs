//! Lines a region server reads (commands) or prints (events) give a message or an error, never a
//! panic; and whatever parses writes back to a line that parses to the same message.
#![no_main]

use baton_wire::serve::{ServerCommand, ServerEvent, parse_command, parse_event, to_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(line) = std::str::from_utf8(bytes) else { return };
    if let Ok(command) = parse_command(line) {
        let again: ServerCommand = parse_command(&to_line(&command)).expect("a written command reads back");
        assert_eq!(again, command);
    }
    if let Ok(event) = parse_event(line) {
        let again: ServerEvent = parse_event(&to_line(&event)).expect("a written event reads back");
        // Floats written as JSON read back equal; NaN cannot be written, so it never parses in.
        assert_eq!(again, event);
    }
});
