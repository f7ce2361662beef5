//! Where the CPU of a timed interval went: the machine's busy time
//! (`/proc/stat`) and each role's user + system time (`/proc/PID/stat`).
//!
//! The question it answers is whether a figure is limited by the cores of
//! this machine: when the processes of a run were busy for C core-seconds
//! in all, no overlap of its stages can finish it in less than C / cores.
//!
//! A PostgreSQL cluster's CPU is its postmaster's own time, the time of the
//! children it has reaped (backends that ended) and that of its live
//! children; the harness's children are counted the same way (a child
//! reaped within the interval, e.g. the snapshot command, counts as
//! "ended"). The machine's busy time includes everything, kernel threads
//! and this harness too; what no role claims is shown as the rest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::env::{Env, Side};
use crate::report::Report;

/// One process's line of `/proc/PID/stat`, the fields used here.
#[derive(Debug, Clone)]
struct Stat {
    comm: String,
    ppid: u32,
    /// utime + stime, in clock ticks.
    own: u64,
    /// cutime + cstime: children waited for.
    reaped: u64,
}

fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // After the comm: state (field 3), ppid (4), …, utime (14), stime
    // (15), cutime (16), cstime (17).
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        comm,
        ppid: u32::try_from(field(4)?).ok()?,
        own: field(14)? + field(15)?,
        reaped: field(16)? + field(17)?,
    })
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn all_processes() -> HashMap<u32, Stat> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(s) = read_stat(pid) {
            out.insert(pid, s);
        }
    }
    out
}

/// The machine's busy ticks (user, nice, system, irq, softirq) and stolen
/// ticks, summed over its CPUs, and how many CPUs there are.
fn machine() -> Result<(u64, u64, usize)> {
    let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let mut busy = 0;
    let mut steal = 0;
    let mut cpus = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                let v: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal …
                busy = [0, 1, 2, 5, 6].iter().filter_map(|&i| v.get(i)).sum();
                steal = v.get(7).copied().unwrap_or(0);
            }
            Some(name) if name.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    Ok((busy, steal, cpus.max(1)))
}

/// Clock ticks per second of the `/proc` counters (USER_HZ).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Who a process belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Role {
    Consumer,
    Producer,
    TargetPg,
    SourcePg,
    Nats,
    Tools,
    Ended,
}

impl Role {
    fn label(self, same_cluster: bool) -> &'static str {
        match self {
            Role::Consumer => "syncdata (consumers)",
            Role::Producer => "syncdata-producer",
            Role::TargetPg if same_cluster => "PostgreSQL",
            Role::TargetPg => "target PostgreSQL",
            Role::SourcePg => "source PostgreSQL",
            Role::Nats => "nats-server",
            Role::Tools => "pg_dump, psql and other tools",
            Role::Ended => "processes of the harness that ended",
        }
    }
}

/// Each counted process's ticks at one moment, with its role: a
/// postmaster's own and reaped time, the harness's reaped time (as
/// [`Role::Ended`]), every live child of either, and nats-server.
fn reading(postmasters: &[(u32, Role)]) -> HashMap<u32, (Role, u64)> {
    let procs = all_processes();
    let harness = std::process::id();
    let mut out = HashMap::new();
    for (pid, s) in &procs {
        let role = if let Some(&(_, role)) = postmasters.iter().find(|(pm, _)| pm == pid) {
            role
        } else if *pid == harness {
            out.insert(*pid, (Role::Ended, s.reaped));
            continue;
        } else if let Some(&(_, role)) = postmasters.iter().find(|(pm, _)| *pm == s.ppid) {
            role
        } else if s.comm == "nats-server" {
            Role::Nats
        } else if s.ppid == harness {
            match s.comm.as_str() {
                "syncdata" => Role::Consumer,
                c if c.starts_with("syncdata-produc") => Role::Producer,
                _ => Role::Tools,
            }
        } else {
            continue;
        };
        // Own time, and what it reaped of its own children (a postmaster's
        // ended backends, a shell's pipeline).
        out.insert(*pid, (role, s.own + s.reaped));
    }
    out
}

/// Ticks per role between two readings. A process that ended in between
/// has its whole time in its parent's reaped time: what it had used
/// before the first reading is taken off again (from the cluster for a
/// backend, from [`Role::Ended`] for a child of the harness).
fn delta(
    before: &HashMap<u32, (Role, u64)>,
    after: &HashMap<u32, (Role, u64)>,
) -> HashMap<Role, i64> {
    let mut out: HashMap<Role, i64> = HashMap::new();
    for (pid, (role, now)) in after {
        let then = match before.get(pid) {
            Some((r, t)) if r == role => *t,
            _ => 0,
        };
        *out.entry(*role).or_default() += *now as i64 - then as i64;
    }
    for (pid, (role, then)) in before {
        if after.get(pid).is_some_and(|(r, _)| r == role) {
            continue;
        }
        let charged = match role {
            Role::Consumer | Role::Producer | Role::Tools => Role::Ended,
            other => *other,
        };
        *out.entry(charged).or_default() -= *then as i64;
    }
    out
}

/// A running measurement.
pub struct Meter {
    postmasters: Vec<(u32, Role)>,
    start: Instant,
    busy: u64,
    steal: u64,
    procs: HashMap<u32, (Role, u64)>,
}

/// What a [`Meter`] measured.
pub struct Used {
    pub wall: Duration,
    pub cpus: usize,
    /// Busy core-seconds of the whole machine.
    pub busy: f64,
    /// Core-seconds stolen by the hypervisor.
    pub steal: f64,
    /// Core-seconds per role, largest first.
    pub roles: Vec<(&'static str, f64)>,
}

/// The postmaster of one side's cluster.
async fn postmaster_of(env: &Env, side: Side) -> Result<u32> {
    let pool = env.pool(side, "postgres", 1).await?;
    let backend: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    let pid = u32::try_from(backend).context("a negative backend pid")?;
    // Read while the backend lives: it ends with the pool.
    let stat = read_stat(pid);
    pool.close().await;
    stat.map(|s| s.ppid)
        .with_context(|| format!("cannot read /proc/{pid}/stat (PostgreSQL on another machine?)"))
}

impl Meter {
    /// Starts measuring (the same cluster as source and target is
    /// counted once).
    pub async fn start(env: &Env) -> Result<Meter> {
        let src = postmaster_of(env, Side::Source).await?;
        let dst = postmaster_of(env, Side::Target).await?;
        let mut postmasters = vec![(dst, Role::TargetPg)];
        if src != dst {
            postmasters.push((src, Role::SourcePg));
        }
        let (busy, steal, _) = machine()?;
        let procs = reading(&postmasters);
        Ok(Meter {
            postmasters,
            start: Instant::now(),
            busy,
            steal,
            procs,
        })
    }

    /// What was used since the start (call while the processes measured
    /// are still running: a process that is not the harness's child and
    /// ended is only in the machine's total).
    pub fn stop(&self) -> Result<Used> {
        let wall = self.start.elapsed();
        let (busy, steal, cpus) = machine()?;
        let now = reading(&self.postmasters);
        let tick = ticks_per_second();
        let same_cluster = self.postmasters.len() == 1;
        let mut roles: Vec<(&'static str, f64)> = delta(&self.procs, &now)
            .into_iter()
            .map(|(role, t)| (role.label(same_cluster), t.max(0) as f64 / tick))
            .filter(|(_, s)| *s >= 0.005)
            .collect();
        roles.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(Used {
            wall,
            cpus,
            busy: busy.saturating_sub(self.busy) as f64 / tick,
            steal: steal.saturating_sub(self.steal) as f64 / tick,
            roles,
        })
    }
}

impl Used {
    /// E.g. "4.61 of 5.12 core-s busy (2 cores × 2.56 s): target PostgreSQL
    /// 2.31, syncdata (consumers) 1.20, …, the rest 0.40".
    pub fn line(&self) -> String {
        let claimed: f64 = self.roles.iter().map(|(_, s)| s).sum();
        let mut parts: Vec<String> = self
            .roles
            .iter()
            .map(|(label, s)| format!("{label} {s:.2}"))
            .collect();
        let rest = self.busy - claimed;
        if rest >= 0.005 {
            parts.push(format!("the rest (kernel, harness, other) {rest:.2}"));
        }
        let steal = if self.steal >= 0.005 {
            format!("; {:.2} core-s stolen by the hypervisor", self.steal)
        } else {
            String::new()
        };
        format!(
            "{:.2} of {:.2} core-s busy ({} cores × {:.2} s): {}{steal}",
            self.busy,
            self.cpus as f64 * self.wall.as_secs_f64(),
            self.cpus,
            self.wall.as_secs_f64(),
            parts.join(", ")
        )
    }

    /// The shortest time the same work could take on this machine with
    /// every core busy all along: busy core-seconds / cores.
    pub fn floor(&self) -> Duration {
        Duration::from_secs_f64(self.busy / self.cpus as f64)
    }
}

/// Prints where the CPU of `what` went and keeps it as a note of the
/// report.
pub fn record(report: &mut Report, what: &str, used: Used) {
    let line = format!(
        "CPU, {what}: {}; with every core busy the same work would take {:.2} s at least",
        used.line(),
        used.floor().as_secs_f64()
    );
    println!("{line}");
    report.note(line);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{delta, parse_stat, Role};

    #[test]
    fn reads_the_fields_after_a_comm_with_spaces_and_parentheses() {
        let line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 30 7 3 20 0 1 0 100 1000 10";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.comm, "a (b) c");
        assert_eq!(s.ppid, 17);
        assert_eq!(s.own, 280);
        assert_eq!(s.reaped, 10);
    }

    #[test]
    fn a_truncated_line_is_none() {
        assert!(parse_stat("4242 (x) S 1 2").is_none());
    }

    #[test]
    fn an_ended_child_counts_only_its_time_after_the_first_reading() {
        // Harness 1 (its reaped time), a producer 10 that ends in between
        // (30 ticks before, 50 in all), a consumer 11 alive throughout,
        // a backend 20 that ends and one 21 that starts.
        let before = HashMap::from([
            (1, (Role::Ended, 5)),
            (10, (Role::Producer, 30)),
            (11, (Role::Consumer, 100)),
            (2, (Role::TargetPg, 400)),
            (20, (Role::TargetPg, 40)),
        ]);
        let after = HashMap::from([
            (1, (Role::Ended, 55)),
            (11, (Role::Consumer, 160)),
            (2, (Role::TargetPg, 400 + 70)),
            (21, (Role::TargetPg, 9)),
        ]);
        let d = delta(&before, &after);
        assert_eq!(d[&Role::Ended], 20);
        assert_eq!(d[&Role::Consumer], 60);
        assert_eq!(d[&Role::TargetPg], 70 - 40 + 9);
        assert!(!d.contains_key(&Role::Producer));
    }
}
