//! The `heim` binary: argument parsing, logging set-up and exit codes. Everything else lives in the
//! library.

fn main() {
    println!("heim");
}
