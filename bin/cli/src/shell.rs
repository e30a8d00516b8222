//! The interactive shell, like the Go system's CLI: `put KEY VALUE`, `read KEY`, `delete KEY`,
//! `readrange START END [LIMIT]`, `batchput {json}` or `batchput K=V ...`, `status`, `help`, `exit`.
//! On a terminal it shows a prompt and keeps a line history (arrow keys); with piped input it reads
//! commands line by line with no prompt, so scripts can drive it. A failing command prints its error
//! and the shell goes on.

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

/// Runs the shell until `exit` or end of input.
pub async fn run(target: &mut Target) -> Result<(), CliError> {
    if std::io::stdin().is_terminal() {
        let mut editor = rustyline::DefaultEditor::new()
            .map_err(|e| CliError::failure(format!("cannot start the shell: {e}")))?;
        println!("kvctl shell; type help for commands");
        loop {
            match editor.readline("kv> ") {
                Ok(line) => {
                    let _ = editor.add_history_entry(line.as_str());
                    if !step(target, &line).await {
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
            if !step(target, &line?).await {
                break;
            }
        }
    }
    Ok(())
}

/// Runs one line; false to leave.
async fn step(target: &mut Target, line: &str) -> bool {
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
                out.write_all(&value)?;
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
                        out.write_all(k)?;
                        out.write_all(b"\t")?;
                        out.write_all(v)?;
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
        Ok(()) => true,
        Err(e) if e.code == 0 => false,
        Err(e) => {
            eprintln!("error: {}", e.message);
            true
        }
    }
}
