//! `--help` teaches: every command's help runs and shows the command run on an example, and the
//! top-level list gives each command a whole summary (clap takes a command's first doc
//! paragraph for that line, so a paragraph that ends in "Example:" shows as a cut sentence).

use crate::common::cli;

/// `mmr1-fast --help`'s command list: (command, summary), `help` left out.
fn command_list() -> Vec<(String, String)> {
    let o = cli(&["--help"]);
    assert!(o.status.success(), "--help failed");
    let text = String::from_utf8(o.stdout).unwrap();
    let list = text.split("Commands:").nth(1).expect("--help lists the commands");
    let list = list.split("\n\n").next().unwrap();
    list.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (cmd, summary) = l.split_once(char::is_whitespace)?;
            Some((cmd.to_string(), summary.trim().to_string()))
        })
        .filter(|(c, _)| c != "help")
        .collect()
}

#[test]
fn every_command_help_shows_an_example_run() {
    let cmds = command_list();
    assert!(cmds.len() >= 9, "commands: {cmds:?}");
    for (c, _) in &cmds {
        let o = cli(&[c, "--help"]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{c} --help failed");
        assert!(text.contains(&format!("Usage: mmr1-fast {c}")), "{c} --help:\n{text}");
        let example = format!("mmr1-fast {c} ");
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(&example)),
            "{c} --help shows no example run:\n{text}"
        );
    }
}

#[test]
fn command_summaries_are_whole() {
    for (c, summary) in command_list() {
        assert!(summary.len() > 20, "{c}: summary {summary:?}");
        assert!(!summary.ends_with(':'), "{c}: the summary is cut at its example: {summary:?}");
    }
}

/// Every option of every command says what it does: in `--help`'s long form clap prints an
/// option's doc on the lines after it, so an option followed directly by the next option, a
/// blank line or a `[default: ..]` has none.
#[test]
fn every_option_is_explained() {
    let mut bare = Vec::new();
    for (c, _) in command_list() {
        let o = cli(&[&c, "--help"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let options = text.split("Options:").nth(1).unwrap_or("");
        let lines: Vec<&str> = options.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            // An option's line: `-x, --name <V>` or `--name <V>`, indented by 2 or 6.
            if !(l.starts_with("  -") || l.starts_with("      --")) || !t.starts_with('-') {
                continue;
            }
            if t.starts_with("-h, --help") || t.starts_with("-V, --version") {
                continue;
            }
            let doc = lines.get(i + 1).map(|n| n.trim()).unwrap_or("");
            if doc.is_empty() || doc.starts_with('-') || doc.starts_with("[default") {
                bare.push(format!("{c}: {t}"));
            }
        }
    }
    assert!(bare.is_empty(), "options without a description:\n{}", bare.join("\n"));
}
