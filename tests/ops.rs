//! Operational safety of the `duplex` binary: a closed standard output ends a report without a
//! panic; the state directory, its files and the control socket are private whatever the
//! umask; the control socket answers only its own user (and root), refuses an oversized request
//! without buffering it, and drops a client that does not finish its request in time.

mod harness;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};
use harness::{REPLICATION_GUARD, duplex_bin, wait_for};

/// Runs `duplex --config <config> <args>` with its standard output a pipe whose reader is
/// already gone; returns the exit code and what it wrote to standard error.
fn run_into_closed_pipe(config: &Path, args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(duplex_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_the_report_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("duplex.toml");
    // An unreachable site: `check` still prints a whole report (and exits 1: not ready).
    std::fs::write(
        &config,
        "[sites.store]\nkind = \"postgres\"\nurl = \"postgres://duplex@127.0.0.1:1/shop\"\n\n\
         [sites.erp]\nkind = \"mysql\"\nurl = \"mysql://duplex@127.0.0.1:1/erp\"\n\n\
         [[mappings]]\nname = \"orders\"\ntables = { store = \"public.orders\", erp = \"erp.orders\" }\n\
         direction = \"store->erp\"\n",
    )
    .unwrap();
    for (args, want) in [
        (&["check"][..], 1),
        (&["conflicts"][..], 0),
        (&["conflicts", "--json"][..], 0),
    ] {
        let (code, stderr) = run_into_closed_pipe(&config, args);
        assert_eq!(code, Some(want), "duplex {args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "duplex {args:?}: {stderr}"
        );
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A two-way mapping between a fresh PostgreSQL and a fresh MariaDB database, so that `run`
/// starts the merge engine and its control socket.
fn two_way() -> (PgDatabase, MariaDatabase, String) {
    let store = shared_pg().create_database();
    store
        .execute_as_duplex("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .unwrap();
    let erp = shared_mariadb().create_database();
    erp.sql("CREATE TABLE items (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
        .unwrap();
    let config = format!(
        "[sites.{s}]\nkind = \"postgres\"\nurl = \"{su}\"\n\n\
         [sites.{e}]\nkind = \"mysql\"\nurl = \"{eu}\"\n\n\
         [[mappings]]\nname = \"items\"\ntables = {{ {s} = \"public.items\", {e} = \"{e}.items\" }}\n\
         direction = \"both\"\n",
        s = store.name(),
        su = store.url(),
        e = erp.name(),
        eu = erp.url(),
    );
    (store, erp, config)
}

/// `duplex run` started under umask 000; killed when dropped.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_with_umask_000(config: &Path, log: &Path) -> Running {
    let file = std::fs::File::create(log).unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" --config \"$1\" run")
        .arg(duplex_bin())
        .arg(config)
        .env("DUPLEX_LOG", "info,duplex=debug")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    Running {
        child,
        log: log.to_owned(),
    }
}

/// Sends `request` on the socket and reads the answer until the server closes.
fn exchange(socket: &Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn state_files_and_the_control_socket_are_private_and_guarded() {
    let (_store, _erp, config_text) = two_way();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("duplex.toml");
    std::fs::write(&config, config_text).unwrap();
    // A state directory left world-writable (as an earlier release under umask 000 made it).
    let state = dir.path().join("duplex-state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut duplex = run_with_umask_000(&config, &dir.path().join("duplex.log"));
    let socket = state.join("control.sock");
    wait_for("the control socket", REPLICATION_GUARD, || {
        if let Some(status) = duplex.child.try_wait().unwrap() {
            panic!("duplex exited with {status}\n{}", duplex.log_text());
        }
        if socket.exists() && duplex.log_text().contains("merge engine started") {
            Ok(())
        } else {
            Err(duplex.log_text())
        }
    });
    assert_eq!(mode(&state), 0o700, "{}", duplex.log_text());
    assert_eq!(mode(&state.join("state.redb")), 0o600);
    assert_eq!(mode(&socket), 0o600);
    let log = duplex.log_text();
    assert!(
        log.contains(&format!("{} had mode 0777", state.display())),
        "the loose directory is not reported:\n{log}"
    );

    // The owner is answered.
    let answer = exchange(&socket, b"\"Conflicts\"\n");
    assert!(answer.starts_with("{\"Conflicts\":"), "{answer}");

    // An oversized request is refused once the limit is read, not buffered whole: the client
    // is answered while it still has most of its request to send.
    let mut stream = UnixStream::connect(&socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0usize;
    let refused = loop {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            // The server closed after answering.
            Err(_) => break true,
        }
        if sent > 64 * 1024 * 1024 {
            break false;
        }
    };
    assert!(refused, "64 MiB were accepted without a refusal");
    assert!(sent < 8 * 1024 * 1024, "{sent} bytes read before refusing");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.contains("request longer than 1048576 bytes"),
        "{answer:?}"
    );

    // A client that never finishes its request is disconnected after the timeout (10 s).
    let started = Instant::now();
    let mut idle = UnixStream::connect(&socket).unwrap();
    idle.write_all(b"\"Confl").unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut rest = Vec::new();
    let read = idle.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(50),
        "closed after {waited:?}"
    );

    // Another user is refused even when the directory and socket were opened up by hand.
    if is_root() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
        // Reading only (-u): the refusal comes before any request is read.
        let output = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "socat",
                "-u",
            ])
            .arg(format!("UNIX-CONNECT:{}", socket.display()))
            .arg("STDOUT")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&output.stdout);
        assert!(
            answer.contains("Refused") && answer.contains("only the user duplex runs as"),
            "{answer:?} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        wait_for("the refusal in the log", Duration::from_secs(10), || {
            let log = duplex.log_text();
            if log.contains("refused a control socket connection from another user")
                && log.contains("uid=65534")
            {
                Ok(())
            } else {
                Err(log)
            }
        });
    } else {
        eprintln!("not root: the peer check is covered by control::tests only");
    }

    // Out of file descriptors: `accept` fails with EMFILE while a connection waits, and the
    // loop backs off (logging it) instead of spinning on the ready listener.
    let pid = duplex.child.id();
    let (soft, hard) = nofile(pid);
    let open = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    // Only the soft limit: raising a hard limit again needs a privilege containers may lack.
    // duplex opens and closes connections of its own meanwhile, so the limit is set to what is
    // open at each poll (a descriptor closed since would let `accept` succeed), and a new
    // connection waits each time.
    let mut waiting = Vec::new();
    wait_for(
        "the accept failure in the log",
        Duration::from_secs(20),
        || {
            set_nofile(pid, &open().to_string(), &hard);
            waiting.push(UnixStream::connect(&socket).unwrap());
            let log = duplex.log_text();
            if log.contains("the control socket cannot accept connections") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    let before = cpu_ticks(pid);
    let started = Instant::now();
    // Measuring CPU use over a stretch of time: the sleep is the measurement, not a wait.
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - before;
    let seconds = started.elapsed().as_secs_f64();
    set_nofile(pid, &soft, &hard);
    // 100 ticks per second: a spinning loop uses about one core (about 200 ticks here).
    assert!(
        (used as f64) < 0.25 * 100.0 * seconds,
        "{used} CPU ticks in {seconds:.1} s while out of file descriptors"
    );
    // With descriptors back, the control socket answers again.
    let answer = exchange(&socket, b"\"Conflicts\"\n");
    assert!(answer.starts_with("{\"Conflicts\":"), "{answer}");
    assert!(
        duplex.child.try_wait().unwrap().is_none(),
        "{}",
        duplex.log_text()
    );
}

/// Sets the open-files limits of process `pid`.
fn set_nofile(pid: u32, soft: &str, hard: &str) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .unwrap();
    assert!(status.success());
}

/// The process's user and system CPU time, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The process's soft and hard limits on open files.
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_owned(), fields[4].to_owned())
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
