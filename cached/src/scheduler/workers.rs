//! Connected runner agents and what they can build.
//!
//! Matching: a job may pin a Go version (the build key includes it, so an agent with another
//! version would build something else). With CGO_ENABLED=0, GOOS/GOARCH is only part of the build
//! key, so any agent builds any target; a cgo target needs an agent with a C compiler for it.

use std::collections::HashMap;

use proto::v1::{AgentInfo, JobSpec, LeaseResponse, Target};
use tokio::sync::mpsc;
use tonic::Status;

pub type LeaseSender = mpsc::UnboundedSender<Result<LeaseResponse, Status>>;

pub struct Worker {
    pub info: AgentInfo,
    pub draining: bool,
    pub sender: LeaseSender,
}

#[derive(Default)]
pub struct Workers {
    sessions: HashMap<u64, Worker>,
    next: u64,
}

impl Workers {
    pub fn add(&mut self, info: AgentInfo, sender: LeaseSender) -> u64 {
        self.next += 1;
        self.sessions.insert(self.next, Worker { info, draining: false, sender });
        self.next
    }

    pub fn remove(&mut self, session: u64) -> Option<Worker> {
        self.sessions.remove(&session)
    }

    pub fn get_mut(&mut self, session: u64) -> Option<&mut Worker> {
        self.sessions.get_mut(&session)
    }

    /// The live session of an agent, to send it an abort.
    pub fn by_agent(&self, agent_id: &str) -> Option<&Worker> {
        self.sessions.values().find(|worker| worker.info.agent_id == agent_id && !worker.sender.is_closed())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Worker)> {
        self.sessions.iter()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// Whether `agent` can build `target` of `spec`.
pub fn can_build(agent: &AgentInfo, spec: &JobSpec, target: &Target) -> bool {
    if !spec.go_version.is_empty() && spec.go_version != agent.go_version {
        return false;
    }
    if !target.cgo {
        return true;
    }
    agent.c_compilers.iter().any(|cc| {
        cc.goos == target.goos
            && cc.goarch == target.goarch
            && (target.cc.is_empty()
                || cc.cc == target.cc
                || cc.cc.rsplit('/').next() == Some(target.cc.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::CCompiler;

    fn agent(go: &str, compilers: &[(&str, &str, &str)]) -> AgentInfo {
        AgentInfo {
            agent_id: "a".into(),
            go_version: go.into(),
            host_goos: "linux".into(),
            host_goarch: "amd64".into(),
            c_compilers: compilers
                .iter()
                .map(|(goos, goarch, cc)| CCompiler {
                    goos: (*goos).into(),
                    goarch: (*goarch).into(),
                    cc: (*cc).into(),
                })
                .collect(),
            capacity: 1,
            version: String::new(),
            instance: Default::default(),
        }
    }

    fn target(spec: &str, cc: &str) -> Target {
        spec.parse::<proto::Platform>().unwrap().to_wire(cc)
    }

    #[test]
    fn pure_go_goes_anywhere_with_the_right_go_and_cgo_needs_a_compiler() {
        let plain = agent("go1.26.8", &[("linux", "amd64", "gcc")]);
        let cross = agent(
            "go1.26.8",
            &[("linux", "amd64", "gcc"), ("linux", "arm64", "/usr/bin/aarch64-linux-gnu-gcc")],
        );
        let spec = JobSpec { go_version: "go1.26.8".into(), ..JobSpec::default() };
        assert!(can_build(&plain, &spec, &target("windows/amd64", "")));
        assert!(can_build(&plain, &spec, &target("darwin/arm64", "")));
        assert!(!can_build(&plain, &spec, &target("linux/arm64+cgo", "")));
        assert!(can_build(&cross, &spec, &target("linux/arm64+cgo", "")));
        assert!(can_build(&cross, &spec, &target("linux/arm64+cgo", "aarch64-linux-gnu-gcc")));
        assert!(!can_build(&cross, &spec, &target("linux/arm64+cgo", "clang")));
        let old = agent("go1.24.0", &[]);
        assert!(!can_build(&old, &spec, &target("linux/amd64", "")));
        assert!(can_build(&old, &JobSpec::default(), &target("linux/amd64", "")));
    }
}
