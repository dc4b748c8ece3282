//! What commands print for people and scripts, written so that a reader who leaves early
//! (`duplex check | head -1`, `duplex conflicts | true`) ends the output instead of crashing
//! duplex.
//!
//! `print!` and `eprint!` panic when the write fails; with SIGPIPE ignored (as the Rust runtime
//! sets it) a closed pipe is a `BrokenPipe` error, so `duplex check | true` used to exit 101
//! with a backtrace hint. Every command's report goes through [`stdout`] (or [`stderr`] for the
//! backfill summary): a `BrokenPipe` means the reader left, which is not duplex's failure, so it
//! is swallowed and the command keeps its own exit status. Any other write error (a full disk
//! behind a redirect) is reported once on standard error, which is all that can be done.

use std::io::{self, Write};

/// Writes `text` to standard output and flushes it; a reader that left is not an error.
pub fn stdout(text: &str) {
    report(write_all(&mut io::stdout().lock(), text), "standard output");
}

/// Writes `text` to standard error and flushes it; a reader that left is not an error.
pub fn stderr(text: &str) {
    // Standard error itself failing leaves nowhere to say so.
    let _ = write_all(&mut io::stderr().lock(), text);
}

/// Writes and flushes, treating a closed reader as done.
fn write_all(out: &mut impl Write, text: &str) -> io::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn report(result: io::Result<()>, what: &str) {
    if let Err(error) = result {
        let _ = writeln!(io::stderr(), "error: cannot write to {what}: {error}");
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write};

    /// A writer whose reader has left.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_reader_that_left_is_not_an_error() {
        assert!(super::write_all(&mut Closed, "report\n").is_ok());
    }

    #[test]
    fn other_write_errors_are_kept() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(28))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(super::write_all(&mut Full, "report\n").is_err());
    }
}
