//! What a manifest reaches in its repository: what it names, what the manifests among those
//! name, and so on. A push moves all of it after the manifest's own row (so a forget takes an
//! image before its parts) and keeps what a tag vouches for.
//!
//! A manifest's names are a function of its bytes, and so of its digest: they are kept in
//! memory ([`ManifestNames`]), so that a push of a small index over large children it reached
//! before reads none of them again. Without that, a 700-byte index pushed over and over made
//! the server read and parse up to [`MAX_REACHED_MANIFEST_BYTES`] of stored manifests each
//! time (from PostgreSQL, over the network), a cost the pusher did not pay.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use super::manifests::{MAX_REFERENCES, Manifest};
use super::names::{Repository, Sha256Digest};
use super::records::{Recorded, RegistryRecords};

/// Most bytes of manifests one push reaches, and most records: a real index names a few small
/// children, and one naming thousands of large children (or an index over indexes over them)
/// must not make each push list and move that much.
pub(super) const MAX_REACHED_MANIFEST_BYTES: usize = 16 << 20;
pub(super) const MAX_REACHED_RECORDS: usize = 4 * MAX_REFERENCES;

/// A push reaches more than [`MAX_REACHED_MANIFEST_BYTES`] or [`MAX_REACHED_RECORDS`].
pub(super) struct TooLarge;

/// Everything a manifest reaches in its repository, each once. Subjects, which need not be
/// there, apart.
pub(super) struct Reached {
    pub(super) records: Vec<Recorded>,
    pub(super) subjects: Vec<Recorded>,
}

impl Reached {
    /// Lists each manifest reached once, within the bounds.
    pub(super) fn below(
        records: &dyn RegistryRecords,
        names: &ManifestNames,
        repo: &Repository,
        named: Vec<Recorded>,
    ) -> crate::error::Result<Result<Self, TooLarge>> {
        let mut listed: HashSet<Vec<u8>> = named.iter().map(Recorded::pointer_key).collect();
        let mut reached = Self { records: named, subjects: Vec::new() };
        let (mut next, mut bytes) = (0, 0);
        // A level at a time: what the manifests listed so far name is looked up together.
        while next < reached.records.len() {
            let level: Vec<Sha256Digest> = reached.records[next..]
                .iter()
                .filter_map(|recorded| match recorded {
                    Recorded::Manifest { digest, .. } => Some(*digest),
                    _ => None,
                })
                .collect();
            next = reached.records.len();
            let mut known = names.known_held(records, repo, &level)?;
            for digest in &level {
                let of = match known.remove(digest) {
                    Some(held) => held,
                    None => names.read(records, repo, digest)?,
                };
                let Some(of) = of else { continue };
                bytes += of.bytes;
                let (named, subject) = of.records(repo);
                reached.records.extend(named.filter(|name| listed.insert(name.pointer_key())));
                reached.subjects.extend(subject);
                if bytes > MAX_REACHED_MANIFEST_BYTES || reached.records.len() > MAX_REACHED_RECORDS {
                    return Ok(Err(TooLarge));
                }
            }
        }
        Ok(Ok(reached))
    }

    /// Whether all of it is still held, in one step with what protects it from a forget that
    /// read its rows before: moved to now, and kept when a tag or a subject vouches for it.
    /// Returns what is gone.
    pub(super) fn check(
        &self,
        records: &dyn RegistryRecords,
        loose: bool,
    ) -> crate::error::Result<Option<Recorded>> {
        let missing = if loose { records.touch(&self.records)? } else { records.keep(&self.records)? };
        Ok(missing.into_iter().next())
    }

    /// Moves its rows after the manifest's and its tag's: a forget goes oldest first, so it
    /// takes a tag or a manifest before anything it reaches, and a tag never names an image
    /// with a part forgotten. Rows only ever move later, so that stays true.
    pub(super) fn retime(&self, records: &dyn RegistryRecords) {
        match records.touch(&self.records) {
            Ok(gone) if gone.is_empty() => {}
            // Only a forget that went through every newer record first gets here.
            Ok(gone) => {
                tracing::warn!(?gone, "records a stored manifest reaches were forgotten as it was stored")
            }
            Err(err) => tracing::warn!(error = %err, "marking the records a manifest reaches as used failed"),
        }
    }
}

/// Makes kept what `subjects` reach (the subjects of a signature, or of what a tag reaches):
/// a referrer vouches for them too, but they need not be there, nor be moved.
pub(super) fn keep_subjects(
    records: &dyn RegistryRecords,
    names: &ManifestNames,
    repo: &Repository,
    subjects: Vec<Recorded>,
) {
    if subjects.is_empty() {
        return;
    }
    let kept = Reached::below(records, names, repo, subjects).and_then(|reached| match reached {
        Ok(reached) => reached.check(records, false).map(drop),
        Err(TooLarge) => Ok(()),
    });
    if let Err(err) = kept {
        tracing::warn!(error = %err, "keeping what a referrer's subject reaches failed");
    }
}

/// What one stored manifest names: its config, layers (those fetched from elsewhere, `urls`,
/// excepted) and children, and its subject apart; nothing, if it does not parse as a manifest.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Names {
    blobs: Vec<Sha256Digest>,
    manifests: Vec<Sha256Digest>,
    subject: Option<Sha256Digest>,
    /// The manifest's length, which counts toward [`MAX_REACHED_MANIFEST_BYTES`].
    bytes: usize,
}

impl Names {
    pub(super) fn parse(bytes: &[u8]) -> Self {
        let Ok(manifest) = serde_json::from_slice::<Manifest>(bytes) else {
            return Self { bytes: bytes.len(), ..Self::default() };
        };
        let digest = |descriptor: &super::manifests::Descriptor| Sha256Digest::parse(&descriptor.digest).ok();
        let layers = manifest.layers.iter().filter(|layer| layer.urls.is_empty());
        Self {
            blobs: manifest.config.iter().chain(layers).filter_map(digest).collect(),
            manifests: manifest.manifests.iter().filter_map(digest).collect(),
            subject: manifest.subject.as_ref().and_then(digest),
            bytes: bytes.len(),
        }
    }

    /// The records these are in `repo`, and the subject's.
    fn records<'a>(
        &'a self,
        repo: &'a Repository,
    ) -> (impl Iterator<Item = Recorded> + 'a, Option<Recorded>) {
        let manifest_of =
            |digest: &Sha256Digest| Recorded::Manifest { repo: repo.clone(), digest: *digest, subject: None };
        let blobs = self.blobs.iter().map(|sha256| Recorded::Blob { repo: repo.clone(), sha256: *sha256 });
        (blobs.chain(self.manifests.iter().map(manifest_of)), self.subject.as_ref().map(manifest_of))
    }

    /// What it costs to keep: a digest per name.
    fn weight(&self) -> usize {
        1 + self.blobs.len() + self.manifests.len()
    }
}

/// Most digests [`ManifestNames`] keeps, both generations together (about 40 bytes each): a
/// few pushes' worth of the largest reach.
const KEPT_NAMES: usize = 8 * MAX_REACHED_RECORDS;

/// The names of manifests reached lately, by digest, in two generations: a lookup moves what it
/// finds to the current one, and when that is full the older one is dropped.
#[derive(Default)]
pub(crate) struct ManifestNames(Mutex<Generations>);

#[derive(Default)]
struct Generations {
    current: HashMap<Sha256Digest, Arc<Names>>,
    current_weight: usize,
    older: HashMap<Sha256Digest, Arc<Names>>,
}

impl ManifestNames {
    /// The names of those of `digests` whose names are known, each `None` when `repo` does
    /// not hold it: one lookup for all of them.
    fn known_held(
        &self,
        records: &dyn RegistryRecords,
        repo: &Repository,
        digests: &[Sha256Digest],
    ) -> crate::error::Result<HashMap<Sha256Digest, Option<Arc<Names>>>> {
        let known: Vec<(Sha256Digest, Arc<Names>)> =
            digests.iter().filter_map(|digest| Some((*digest, self.known(digest)?))).collect();
        let wanted: Vec<Sha256Digest> = known.iter().map(|(digest, _)| *digest).collect();
        let held = records.has_manifests(repo, &wanted)?;
        Ok(known
            .into_iter()
            .zip(held)
            .map(|((digest, names), held)| (digest, held.then_some(names)))
            .collect())
    }

    /// The names of the manifest `digest` in `repo`, read and parsed; `None` when the repository
    /// does not hold it.
    fn read(
        &self,
        records: &dyn RegistryRecords,
        repo: &Repository,
        digest: &Sha256Digest,
    ) -> crate::error::Result<Option<Arc<Names>>> {
        let Some(manifest) = records.manifest(repo, digest)? else { return Ok(None) };
        let names = Arc::new(Names::parse(&manifest.bytes));
        self.remember(*digest, Arc::clone(&names));
        Ok(Some(names))
    }

    fn known(&self, digest: &Sha256Digest) -> Option<Arc<Names>> {
        let mut generations = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(names) = generations.current.get(digest) {
            return Some(Arc::clone(names));
        }
        let names = generations.older.remove(digest)?;
        generations.insert(*digest, Arc::clone(&names));
        Some(names)
    }

    fn remember(&self, digest: Sha256Digest, names: Arc<Names>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(digest, names);
    }
}

impl Generations {
    fn insert(&mut self, digest: Sha256Digest, names: Arc<Names>) {
        if self.current_weight + names.weight() > KEPT_NAMES / 2 {
            self.older = std::mem::take(&mut self.current);
            self.current_weight = 0;
        }
        self.current_weight += names.weight();
        self.current.insert(digest, names);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::registry::records::{ManifestWrite, StoredManifest};

    /// Stores `json` by digest in `repo`; returns what names it.
    fn store(records: &super::super::RocksRegistry, repo: &Repository, json: &str) -> Recorded {
        let digest = Sha256Digest::of(json.as_bytes());
        let stored = StoredManifest { media_type: "m".into(), bytes: Bytes::from(json.to_owned()) };
        let write = ManifestWrite { digest, manifest: &stored, tag: None, referrer: None };
        records.put_manifest(repo, write).unwrap();
        Recorded::Manifest { repo: repo.clone(), digest, subject: None }
    }

    fn descriptor(digest: Sha256Digest) -> String {
        format!(r#"{{"mediaType":"m","digest":"{digest}","size":1}}"#)
    }

    /// A chain of small indexes, each over the one before and one image of thousands of
    /// layers, made each push read and move that image once for every index under it
    /// (seconds a push, by `cas-write`): what a push reaches is read and listed once.
    #[test]
    fn a_push_reads_and_moves_what_it_reaches_once() {
        let dir = tempfile::tempdir().unwrap();
        let records = super::super::RocksRegistry::new(crate::db::open(dir.path()).unwrap());
        let repo = Repository::parse("main/app").unwrap();
        let layers: Vec<String> =
            (0..1000u32).map(|n| descriptor(Sha256Digest::of(&n.to_be_bytes()))).collect();
        let image = format!(r#"{{"layers":[{}]}}"#, layers.join(","));
        let Recorded::Manifest { digest: image_digest, .. } = store(&records, &repo, &image) else {
            panic!()
        };
        let mut top = None;
        for _ in 0..20 {
            let under =
                top.map(|digest: Sha256Digest| format!(",{}", descriptor(digest))).unwrap_or_default();
            let index = format!(r#"{{"manifests":[{}{under}]}}"#, descriptor(image_digest));
            let Recorded::Manifest { digest, .. } = store(&records, &repo, &index) else { panic!() };
            top = Some(digest);
        }
        let named = vec![Recorded::Manifest { repo: repo.clone(), digest: top.unwrap(), subject: None }];
        let Ok(reached) = Reached::below(&records, &ManifestNames::default(), &repo, named).unwrap() else {
            panic!("refused")
        };
        assert_eq!(reached.records.len(), 20 + 1 + 1000, "each index, the image and its layers, once");

        // Past the bound on records, the push is refused rather than moving them all.
        let wide: Vec<String> = (0..5u32)
            .map(|n| {
                let layers = (0..4000u32)
                    .map(|l| descriptor(Sha256Digest::of(&[n.to_be_bytes(), l.to_be_bytes()].concat())));
                let Recorded::Manifest { digest, .. } = store(
                    &records,
                    &repo,
                    &format!(r#"{{"layers":[{}]}}"#, layers.collect::<Vec<_>>().join(",")),
                ) else {
                    panic!()
                };
                descriptor(digest)
            })
            .collect();
        let index = store(&records, &repo, &format!(r#"{{"manifests":[{}]}}"#, wide.join(",")));
        let names = ManifestNames::default();
        assert!(matches!(Reached::below(&records, &names, &repo, vec![index]).unwrap(), Err(TooLarge)));
    }

    /// A small index pushed again and again over large children made every push read and parse
    /// them: their names are kept by digest, and a second walk reads no manifest. (Here the
    /// digest holds other bytes in another repository, which no real push can store: the walk
    /// lists the names it kept, not those bytes' names.)
    #[test]
    fn a_walk_over_manifests_reached_before_reads_none_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let records = super::super::RocksRegistry::new(crate::db::open(dir.path()).unwrap());
        let (repo, other) = (Repository::parse("main/app").unwrap(), Repository::parse("other/app").unwrap());
        let layers: Vec<String> =
            (0..100u32).map(|n| descriptor(Sha256Digest::of(&n.to_be_bytes()))).collect();
        let image = store(&records, &repo, &format!(r#"{{"layers":[{}]}}"#, layers.join(",")));
        let Recorded::Manifest { digest, .. } = image else { panic!() };
        let empty = StoredManifest { media_type: "m".into(), bytes: Bytes::from_static(b"{}") };
        let write = ManifestWrite { digest, manifest: &empty, tag: None, referrer: None };
        records.put_manifest(&other, write).unwrap();
        let walk = |names: &ManifestNames, repo: &Repository| {
            let named = vec![Recorded::Manifest { repo: repo.clone(), digest, subject: None }];
            let Ok(reached) = Reached::below(&records, names, repo, named).unwrap() else {
                panic!("refused")
            };
            reached.records.len()
        };
        let names = ManifestNames::default();
        assert_eq!(walk(&names, &repo), 101);
        assert_eq!(walk(&names, &other), 101, "the second walk read the manifest again");
        assert_eq!(walk(&ManifestNames::default(), &other), 1, "bytes read afresh");

        // Only what the repository holds is reached.
        let absent = Repository::parse("absent/app").unwrap();
        assert_eq!(walk(&names, &absent), 1);
    }

    /// The kept names are bounded: past half of them, the older generation goes.
    #[test]
    fn kept_names_are_bounded() {
        let names = ManifestNames::default();
        let wide = Names { blobs: vec![Sha256Digest::of(b"x"); MAX_REFERENCES], ..Names::default() };
        let wide = Arc::new(wide);
        for n in 0..100u32 {
            names.remember(Sha256Digest::of(&n.to_be_bytes()), Arc::clone(&wide));
        }
        let generations = names.0.lock().unwrap();
        let kept: usize =
            generations.current.values().chain(generations.older.values()).map(|n| n.weight()).sum();
        assert!(kept <= KEPT_NAMES, "{kept} names kept");
        assert!(names_known(&generations, 99) && !names_known(&generations, 0));
    }

    fn names_known(generations: &Generations, n: u32) -> bool {
        let digest = Sha256Digest::of(&n.to_be_bytes());
        generations.current.contains_key(&digest) || generations.older.contains_key(&digest)
    }
}
