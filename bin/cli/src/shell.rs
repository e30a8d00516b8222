//! The interactive shell, like the Go system's CLI: `put KEY VALUE`, `read KEY`, `delete KEY`,
//! `readrange START END [LIMIT]`, `batchput {json}` or `batchput K=V ...`, `status`, `help`, `exit`.
//! On a terminal it shows a prompt and keeps a line history (arrow keys); with piped input it reads
//! commands line by line with no prompt, so scripts can drive it. A failing command prints its error
//! and the shell goes on; scripted (stdin not a terminal), the shell then exits with the exit code of the
//! *first* failing command (later failures are often its consequences), even after `exit`. Interactively
//! it exits 0: the person saw every error. Values shown on a terminal are escaped ([`crate::escape`]).

use std::io::{BufRead, IsTerminal, Write};

use crate::error::CliError;
use crate::input::parse_all;
use crate::target::Target;

const HELP: &str = "\
commands:
  put KEY VALUE              store VALUE (the rest of the line) under KEY
  read KEY                   print the value of KEY
  delete KEY                 delete KEY
  readrange START END [N]    print up to N pairs with START <= key <= END, as key<TAB>value
  batchput {\"k\":\"v\",...}     store pairs atomically (or: batchput k1=v1 k2=v2)
  status                     show the status
  help                       this text
  exit                       leave (also: quit, Ctrl-D)";

/// What a line did.
enum Step {
    /// Go on.
    Next,
    /// It failed with this exit code; go on.
    Failed(u8),
    /// `exit`, or stdout closed.
    Leave,
}

/// The first failure's exit code and how many commands failed.
#[derive(Default)]
struct Failures {
    first: Option<u8>,
    count: usize,
}

impl Failures {
    /// Notes what a line did; false to leave.
    fn note(&mut self, step: Step) -> bool {
        match step {
            Step::Next => true,
            Step::Failed(code) => {
                self.first.get_or_insert(code);
                self.count += 1;
                true
            }
            Step::Leave => false,
        }
    }
}

/// Runs the shell until `exit` or end of input.
pub async fn run(target: &mut Target) -> Result<(), CliError> {
    let tty = std::io::stdout().is_terminal();
    let mut failures = Failures::default();
    if std::io::stdin().is_terminal() {
        let mut editor = rustyline::DefaultEditor::new()
            .map_err(|e| CliError::failure(format!("cannot start the shell: {e}")))?;
        println!("kvctl shell; type help for commands");
        loop {
            match editor.readline("kv> ") {
                Ok(line) => {
                    let _ = editor.add_history_entry(line.as_str());
                    if !failures.note(step(target, &line, tty).await) {
                        break;
                    }
                }
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(_) => break,
            }
        }
    } else {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            if !failures.note(step(target, &line?, tty).await) {
                break;
            }
        }
        if let Some(code) = failures.first {
            return Err(CliError {
                code,
                message: format!(
                    "{} command(s) failed; the exit code is the first failure's",
                    failures.count
                ),
            });
        }
    }
    Ok(())
}

/// Runs one line.
async fn step(target: &mut Target, line: &str, tty: bool) -> Step {
    let line = line.trim();
    let (cmd, rest) = line
        .split_once(char::is_whitespace)
        .map_or((line, ""), |(c, r)| (c, r.trim()));
    let result: Result<(), CliError> = async {
        let mut out = std::io::stdout().lock();
        match cmd {
            "" => {}
            "exit" | "quit" => {
                return Err(CliError {
                    code: 0,
                    message: String::new(),
                })
            }
            "help" => writeln!(out, "{HELP}")?,
            "put" => {
                let (key, value) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| CliError::usage("usage: put KEY VALUE"))?;
                target
                    .put(key.as_bytes(), value.trim_start().as_bytes())
                    .await?;
                writeln!(out, "OK")?;
            }
            "read" | "get" => {
                if rest.is_empty() {
                    return Err(CliError::usage("usage: read KEY"));
                }
                let value = target.get(rest.as_bytes()).await?;
                crate::escape::show(&mut out, &value, tty)?;
                writeln!(out)?;
            }
            "delete" => {
                if rest.is_empty() {
                    return Err(CliError::usage("usage: delete KEY"));
                }
                target.delete(rest.as_bytes()).await?;
                writeln!(out, "OK")?;
            }
            "readrange" | "range" => {
                let args: Vec<&str> = rest.split_whitespace().collect();
                let (start, end, limit) = match args.as_slice() {
                    [s, e] => (*s, *e, usize::MAX),
                    [s, e, n] => (
                        *s,
                        *e,
                        n.parse()
                            .map_err(|_| CliError::usage("LIMIT must be a number"))?,
                    ),
                    _ => return Err(CliError::usage("usage: readrange START END [LIMIT]")),
                };
                target
                    .scan(start.as_bytes(), end.as_bytes(), limit, |k, v| {
                        crate::escape::show(&mut out, k, tty)?;
                        out.write_all(b"\t")?;
                        crate::escape::show(&mut out, v, tty)?;
                        out.write_all(b"\n")?;
                        Ok(())
                    })
                    .await?;
            }
            "batchput" | "batch" => {
                let pairs = if rest.starts_with('{') {
                    parse_all(rest)?
                } else {
                    rest.split_whitespace()
                        .map(|kv| {
                            kv.split_once('=')
                                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                                .ok_or_else(|| CliError::usage(format!("{kv:?} is not KEY=VALUE")))
                        })
                        .collect::<Result<Vec<_>, _>>()?
                };
                if pairs.is_empty() {
                    return Err(CliError::usage(
                        "usage: batchput {\"k\":\"v\"} or batchput k=v ...",
                    ));
                }
                target.batch(&pairs).await?;
                writeln!(out, "OK")?;
            }
            "status" => {
                let s = target.status().await?;
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&s).unwrap_or_default()
                )?;
            }
            other => {
                return Err(CliError::usage(format!(
                    "unknown command {other:?}; type help"
                )))
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Step::Next,
        // `exit`, or stdout closed by its reader.
        Err(e) if e.code == crate::error::OK => Step::Leave,
        Err(e) => {
            eprintln!("error: {}", e.message);
            Step::Failed(e.code)
        }
    }
}
