//! cachectl: the command line of cached. The work is done by the library crates
//! (cached-client, cached-gobuild, cached-gocacheprog, cached-oci), which runner-agent uses
//! too; here are the subcommands ([`commands`]), how their results are shown ([`render`],
//! [`submit`]) and `restore-mtimes` ([`mtimes`]).

#![forbid(unsafe_code)]

/// `print!` for what a reader may stop reading (`cachectl jobs list | head`): see
/// [`render::print_out`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::render::print_out(format_args!($($arg)*)) };
}

/// `println!`, as [`out!`].
macro_rules! outln {
    () => { $crate::render::print_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::render::print_out(format_args!("{}\n", format_args!($($arg)*))) };
}

pub mod commands;
pub mod mtimes;
pub mod render;
pub mod submit;
