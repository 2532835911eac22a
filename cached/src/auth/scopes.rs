//! What a token may do: its scopes, the namespaces it may touch, and the table that says which
//! scope each gRPC method needs. A method missing from the table needs `admin`, so a service
//! added without an entry here is closed rather than open.

use std::fmt;
use std::str::FromStr;

/// One permission a token can hold. Scopes do not imply one another: `admin` alone cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Cas reads, GoCache lookups, Stats.
    Read,
    /// Cas uploads (content-addressed and verified, so it cannot poison a build).
    CasWrite,
    /// Go action entries and build keys: whoever holds it decides what every build gets.
    AcWrite,
    /// Runner agents: lease and complete tasks.
    Worker,
    /// Job submission.
    Submit,
    /// Stats reset, eviction, configuration read-out.
    Admin,
}

impl Scope {
    pub const ALL: [Self; 6] =
        [Self::Read, Self::CasWrite, Self::AcWrite, Self::Worker, Self::Submit, Self::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::CasWrite => "cas-write",
            Self::AcWrite => "ac-write",
            Self::Worker => "worker",
            Self::Submit => "submit",
            Self::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|scope| scope.name() == text).ok_or_else(|| {
            format!("unknown scope `{text}`; known scopes: {}", Self::ALL.map(Scope::name).join(", "))
        })
    }
}

/// A set of scopes.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |scope| self.contains(*scope))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses `read,cas-write`.
    pub fn parse_list(text: &str) -> Result<Self, String> {
        text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Scope::from_str).collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |bits, scope| bits | scope.bit()))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter().map(Scope::name).collect();
        f.write_str(&names.join(", "))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{self}]")
    }
}

/// A namespace a token may touch: `*` (any), `main/*` (a prefix), or `main` (exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespacePattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl NamespacePattern {
    pub fn matches(&self, namespace: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(prefix) => namespace.starts_with(prefix.as_str()),
            Self::Exact(name) => namespace == name,
        }
    }

    /// Parses `main/*,pr-7`.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Self::from_str).collect()
    }
}

impl FromStr for NamespacePattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() || text.len() > 256 || text.chars().any(char::is_control) {
            return Err(format!("namespace pattern {text:?} must be 1 to 256 bytes of printable text"));
        }
        let (head, wildcard) = match text.strip_suffix('*') {
            Some(head) => (head, true),
            None => (text, false),
        };
        if head.contains('*') {
            return Err(format!(
                "namespace pattern {text:?}: `*` may only end a pattern (`*`, `main/*`, `pr-*`)"
            ));
        }
        Ok(match (head.is_empty(), wildcard) {
            (true, _) => Self::Any,
            (false, true) => Self::Prefix(head.to_owned()),
            (false, false) => Self::Exact(head.to_owned()),
        })
    }
}

impl fmt::Display for NamespacePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
            Self::Exact(name) => f.write_str(name),
        }
    }
}

/// What a method needs before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health and reflection: probes and tools must work without a token.
    Open,
    Needs(Scope),
}

/// One gRPC method as the auth layer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Method {
    /// `/cached.v1.Cas/Write`.
    pub path: &'static str,
    pub access: Access,
    /// A unary call (one request, one reply) runs under `request_timeout`; streams are held
    /// to `idle_timeout` instead, so a large upload is never cut off while it makes progress.
    pub unary: bool,
    /// Counts against `max_concurrent_uploads`.
    pub upload: bool,
}

const fn method(path: &'static str, scope: Scope, unary: bool, upload: bool) -> Method {
    Method { path, access: Access::Needs(scope), unary, upload }
}

/// Every method cached serves, and the scope it needs. Namespaced methods (GoCache) also check
/// the request's namespace against the token's, in the handler: the namespace is in the body.
pub const METHODS: &[Method] = &[
    method("/cached.v1.Cas/FindMissing", Scope::Read, true, false),
    method("/cached.v1.Cas/Read", Scope::Read, false, false),
    method("/cached.v1.Cas/BatchRead", Scope::Read, true, false),
    method("/cached.v1.Cas/Recheck", Scope::Read, true, false),
    method("/cached.v1.Cas/Write", Scope::CasWrite, false, true),
    method("/cached.v1.Cas/BatchWrite", Scope::CasWrite, true, true),
    method("/cached.v1.GoCache/Get", Scope::Read, true, false),
    method("/cached.v1.GoCache/GetMany", Scope::Read, true, false),
    method("/cached.v1.GoCache/Put", Scope::AcWrite, true, false),
    method("/cached.v1.GoCache/Access", Scope::Read, true, false),
    method("/cached.v1.Stats/Get", Scope::Read, true, false),
    method("/cached.v1.Stats/Report", Scope::Read, true, false),
    method("/cached.v1.Builds/Lookup", Scope::Read, true, false),
    method("/cached.v1.Builds/Record", Scope::AcWrite, true, false),
    method("/cached.v1.Builds/Explain", Scope::Read, true, false),
    method("/cached.v1.Builds/Stats", Scope::Read, true, false),
    method("/cached.v1.Jobs/Submit", Scope::Submit, true, false),
    method("/cached.v1.Jobs/Watch", Scope::Read, false, false),
    method("/cached.v1.Jobs/Cancel", Scope::Submit, true, false),
    method("/cached.v1.Jobs/List", Scope::Read, true, false),
    method("/cached.v1.Workers/Lease", Scope::Worker, false, false),
    method("/cached.v1.Workers/Progress", Scope::Worker, true, false),
    method("/cached.v1.Workers/Complete", Scope::Worker, true, false),
    method("/cached.v1.Admin/Purge", Scope::Admin, true, false),
];

/// Services anyone may call.
const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The one open method that is unary: probes use it, so it is never held to the caps of open
/// streams (`auth::open`).
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// The entry for `path`. Open services are open; anything unknown needs `admin` and is treated
/// as a stream (no request deadline), which is the cautious reading of both.
pub fn lookup(path: &str) -> Method {
    if let Some(method) = METHODS.iter().find(|method| method.path == path) {
        return *method;
    }
    let access = if OPEN_SERVICES.iter().any(|prefix| path.starts_with(prefix)) {
        Access::Open
    } else {
        Access::Needs(Scope::Admin)
    };
    Method { path: "", access, unary: path == HEALTH_CHECK, upload: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print() {
        let scopes = Scopes::parse_list("read, cas-write,ac-write").unwrap();
        assert!(scopes.contains(Scope::AcWrite) && !scopes.contains(Scope::Admin));
        assert_eq!(scopes.to_string(), "read, cas-write, ac-write");
        let err = Scopes::parse_list("read,wirte").unwrap_err();
        assert!(err.contains("`wirte`") && err.contains("cas-write"), "{err}");
        assert_eq!(Scopes::all().iter().count(), 6);
    }

    #[test]
    fn namespace_patterns() {
        let patterns = NamespacePattern::parse_list("main/*, pr-7").unwrap();
        assert!(patterns[0].matches("main/linux"));
        assert!(!patterns[0].matches("main"));
        assert!(patterns[1].matches("pr-7") && !patterns[1].matches("pr-70"));
        assert_eq!("*".parse::<NamespacePattern>(), Ok(NamespacePattern::Any));
        assert!("ma*in".parse::<NamespacePattern>().is_err());
        assert!("".parse::<NamespacePattern>().is_err());
        assert_eq!(patterns[0].to_string(), "main/*");
    }

    #[test]
    fn unknown_methods_need_admin_and_probes_are_open() {
        assert_eq!(lookup("/cached.v1.Cas/Write").access, Access::Needs(Scope::CasWrite));
        assert_eq!(lookup("/cached.v1.Jobs/Submit").access, Access::Needs(Scope::Submit));
        assert_eq!(lookup("/cached.v1.Admin/Evict").access, Access::Needs(Scope::Admin));
        assert_eq!(lookup("/grpc.health.v1.Health/Check").access, Access::Open);
        assert!(
            lookup("/grpc.health.v1.Health/Check").unary && !lookup("/grpc.health.v1.Health/Watch").unary
        );
        assert_eq!(lookup("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").access, Access::Open);
    }
}
