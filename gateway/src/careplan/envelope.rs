//! The signed envelope around a plan: a JWS (RFC 7515) signed with ES256, in compact
//! (`header.payload.signature`) or flattened JSON (`{"protected","payload","signature"}`) form.
//!
//! The payload is the exact bytes of the FHIR Bundle, so no canonicalisation is needed. The claims
//! live in the **protected header**: `{"alg":"ES256","typ":"heim-careplan+jws","kid","aud","seq",
//! "iat","exp","tz"}`. Nothing in the header is believed before the signature has been checked
//! with the key its `kid` names; the algorithm is fixed (ES256 only), so there is no `alg`
//! negotiation to confuse.
//!
//! Verification uses `ring` (already linked for rustls): ES256 is one fixed profile, so a general
//! JOSE library would add code and algorithm choices without adding safety.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono_tz::Tz;
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

use super::plan::{Plan, PlanError};

/// The `typ` a plan envelope carries.
pub const TYP: &str = "heim-careplan+jws";

/// DER prefix of a P-256 `SubjectPublicKeyInfo` (id-ecPublicKey, prime256v1, uncompressed point).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a plan was refused: the reason published on `careplan/status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The signature does not verify with the key `kid` names.
    #[error("bad signature")]
    BadSignature,
    /// `kid` names no trusted key.
    #[error("unknown signing key")]
    UnknownKey,
    /// `aud` is not this gateway.
    #[error("addressed to another gateway")]
    WrongAudience,
    /// `seq` is not above the stored plan's: an old plan replayed (rollback).
    #[error("seq {seq} is not newer than the stored plan's {stored}")]
    NotNewer {
        /// The envelope's seq.
        seq: u64,
        /// The stored plan's seq.
        stored: u64,
    },
    /// `exp` has passed.
    #[error("expired")]
    Expired,
    /// A Timing form the gateway does not support.
    #[error("unsupported timing: {0}")]
    UnsupportedTiming(String),
    /// Not a well-formed envelope or plan.
    #[error("malformed: {0}")]
    Malformed(String),
}

impl Refusal {
    /// The stable reason code on the status topic.
    pub const fn code(&self) -> &'static str {
        match self {
            Refusal::BadSignature => "bad-signature",
            Refusal::UnknownKey => "unknown-key",
            Refusal::WrongAudience => "wrong-audience",
            Refusal::NotNewer { .. } => "rollback",
            Refusal::Expired => "expired",
            Refusal::UnsupportedTiming(_) => "unsupported-timing",
            Refusal::Malformed(_) => "malformed",
        }
    }
}

impl From<PlanError> for Refusal {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Malformed(m) => Refusal::Malformed(m),
            e @ PlanError::UnsupportedTiming { .. } => Refusal::UnsupportedTiming(e.to_string()),
        }
    }
}

/// A trusted key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a PEM `PUBLIC KEY` holding a P-256 key.
    #[error("{0}: not a PEM P-256 (ES256) public key")]
    NotP256(String),
}

/// The keys plan envelopes may be signed with, by `kid`.
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(k, _)| k))
            .finish()
    }
}

impl TrustedKeys {
    /// Adds a key from PEM text (`-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo).
    pub fn add_pem(&mut self, kid: &str, pem: &[u8], name: &str) -> Result<(), KeyError> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem)
            .map_err(|_| KeyError::NotP256(name.to_owned()))?;
        let der = spki.as_ref();
        let point = der
            .strip_prefix(P256_SPKI_PREFIX.as_slice())
            .filter(|p| p.len() == 65 && p[0] == 0x04)
            .ok_or_else(|| KeyError::NotP256(name.to_owned()))?;
        self.keys.push((kid.to_owned(), point.to_vec()));
        Ok(())
    }

    /// Adds a key from a PEM file.
    pub fn add_file(&mut self, kid: &str, path: &Path) -> Result<(), KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.add_pem(kid, &pem, &path.display().to_string())
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted (every plan is then refused as `unknown-key`).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn get(&self, kid: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, p)| p.as_slice())
    }
}

/// The protected header's claims.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Header {
    /// Must be `ES256`.
    pub alg: String,
    /// The signing key.
    pub kid: String,
    /// `heim-careplan+jws` when present.
    #[serde(default)]
    pub typ: Option<String>,
    /// The gateway this plan is for.
    pub aud: String,
    /// Monotonically increasing per gateway; a plan is applied only if above the stored one.
    pub seq: u64,
    /// Issued at, Unix seconds.
    #[serde(default)]
    pub iat: Option<i64>,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// IANA zone windows are computed in; `Europe/Oslo` when absent.
    #[serde(default)]
    pub tz: Option<String>,
}

/// A verified envelope: the claims and the exact payload bytes.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Claims.
    pub header: Header,
    /// The FHIR Bundle bytes.
    pub payload: Vec<u8>,
}

#[derive(Deserialize)]
struct Flattened {
    protected: String,
    payload: String,
    signature: String,
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, Refusal> {
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| Refusal::Malformed(format!("{what} is not base64url")))
}

/// Checks signature, key, audience and expiry (not `seq`: see [`accept`]).
pub fn verify(
    envelope: &[u8],
    keys: &TrustedKeys,
    gateway_id: &str,
    now_unix_s: i64,
) -> Result<Verified, Refusal> {
    verify_typed(envelope, keys, gateway_id, now_unix_s, TYP)
}

/// As [`verify`], for envelopes of another `typ` (signed signalling events use the same form).
pub fn verify_typed(
    envelope: &[u8],
    keys: &TrustedKeys,
    gateway_id: &str,
    now_unix_s: i64,
    typ: &str,
) -> Result<Verified, Refusal> {
    let text = std::str::from_utf8(envelope)
        .map_err(|_| Refusal::Malformed("envelope is not UTF-8".into()))?
        .trim();
    let (protected, payload, signature) = if text.starts_with('{') {
        let f: Flattened = serde_json::from_str(text)
            .map_err(|_| Refusal::Malformed("not a flattened JWS".into()))?;
        (f.protected, f.payload, f.signature)
    } else {
        let mut parts = text.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(p), Some(s), None) => (h.to_owned(), p.to_owned(), s.to_owned()),
            _ => return Err(Refusal::Malformed("not a compact JWS".into())),
        }
    };
    let header_bytes = b64(&protected, "protected header")?;
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|e| Refusal::Malformed(format!("protected header: {e}")))?;
    if header.alg != "ES256" {
        return Err(Refusal::Malformed(format!(
            "alg {:?} (only ES256)",
            header.alg
        )));
    }
    if header.typ.as_deref().is_some_and(|t| t != typ) {
        return Err(Refusal::Malformed(format!("typ is not {typ}")));
    }
    let key = keys.get(&header.kid).ok_or(Refusal::UnknownKey)?;
    let sig = b64(&signature, "signature")?;
    let signing_input = format!("{protected}.{payload}");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
        .verify(signing_input.as_bytes(), &sig)
        .map_err(|_| Refusal::BadSignature)?;
    // Signed by a trusted key from here on: the claims can be believed.
    if header.aud != gateway_id {
        return Err(Refusal::WrongAudience);
    }
    if header.exp <= now_unix_s {
        return Err(Refusal::Expired);
    }
    let payload = b64(&payload, "payload")?;
    Ok(Verified { header, payload })
}

/// An accepted plan with its envelope's claims.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The claims.
    pub header: Header,
    /// The plan.
    pub plan: Plan,
}

/// What is stored about the current plan, for the rollback check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Its seq.
    pub seq: u64,
    /// SHA-256 of its envelope (a retained plan redelivered on reconnect is not a rollback).
    pub digest: [u8; 32],
}

/// The outcome for an envelope that verified.
#[derive(Debug, Clone)]
pub enum Intake {
    /// A newer plan: store and apply it.
    New(Box<Accepted>),
    /// The stored plan, delivered again (retained message on reconnect): nothing to do.
    Same,
}

/// SHA-256 of an envelope.
pub fn digest(envelope: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, envelope);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The whole intake decision: verify, reject rollback, parse the plan.
pub fn accept(
    envelope: &[u8],
    keys: &TrustedKeys,
    gateway_id: &str,
    patient: &str,
    now_unix_s: i64,
    stored: Option<Stored>,
) -> Result<Intake, Refusal> {
    let v = verify(envelope, keys, gateway_id, now_unix_s)?;
    if let Some(s) = stored {
        if v.header.seq == s.seq && digest(envelope) == s.digest {
            return Ok(Intake::Same);
        }
        if v.header.seq <= s.seq {
            return Err(Refusal::NotNewer {
                seq: v.header.seq,
                stored: s.seq,
            });
        }
    }
    let tz: Tz = v
        .header
        .tz
        .as_deref()
        .unwrap_or("Europe/Oslo")
        .parse()
        .map_err(|_| Refusal::Malformed("tz is not an IANA time zone".into()))?;
    let plan = Plan::parse(&v.payload, tz, patient)?;
    Ok(Intake::New(Box::new(Accepted {
        header: v.header,
        plan,
    })))
}

/// Test and tooling support: a freshly generated ES256 key that signs envelopes. Keys exist only
/// in memory; nothing private is ever written to the repository.
pub mod signer {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    /// A signing key.
    #[derive(Debug)]
    pub struct Signer {
        key: EcdsaKeyPair,
        rng: SystemRandom,
    }

    impl Default for Signer {
        fn default() -> Self {
            Self::generate()
        }
    }

    impl Signer {
        /// A new random P-256 key.
        pub fn generate() -> Self {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .expect("the system RNG works");
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .expect("ring parses its own PKCS#8");
            Self { key, rng }
        }

        /// The key kept in a PKCS#8 file, made (mode 0600) when absent: a gateway's own signing key.
        pub fn load_or_create(path: &std::path::Path) -> std::io::Result<Self> {
            let rng = SystemRandom::new();
            let pkcs8 = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    use std::io::Write as _;
                    use std::os::unix::fs::OpenOptionsExt;
                    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                        .map_err(|_| std::io::Error::other("the system RNG failed"))?;
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)?;
                    f.write_all(doc.as_ref())?;
                    f.sync_all()?;
                    doc.as_ref().to_vec()
                }
                Err(e) => return Err(e),
            };
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "not a PKCS#8 P-256 private key",
                    )
                })?;
            Ok(Self { key, rng })
        }

        /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`), for `[[careplan.key]]`.
        pub fn public_pem(&self) -> String {
            let mut der = P256_SPKI_PREFIX.to_vec();
            der.extend_from_slice(self.key.public_key().as_ref());
            let b = base64::engine::general_purpose::STANDARD.encode(der);
            let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
            for chunk in b.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                pem.push('\n');
            }
            pem.push_str("-----END PUBLIC KEY-----\n");
            pem
        }

        /// A compact JWS over `payload` with this header (given as JSON).
        pub fn sign_compact(&self, header: &serde_json::Value, payload: &[u8]) -> String {
            let h = URL_SAFE_NO_PAD.encode(header.to_string());
            let p = URL_SAFE_NO_PAD.encode(payload);
            let input = format!("{h}.{p}");
            let sig = self
                .key
                .sign(&self.rng, input.as_bytes())
                .expect("signing with a valid key works");
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::signer::Signer;
    use super::*;
    use crate::careplan::plan::tests::example_bundle;

    const NOW: i64 = 1_780_000_000;

    fn header(kid: &str, aud: &str, seq: u64, exp: i64) -> serde_json::Value {
        json!({"alg":"ES256","typ":TYP,"kid":kid,"aud":aud,"seq":seq,"iat":NOW - 10,"exp":exp,"tz":"Europe/Oslo"})
    }

    fn setup() -> (Signer, TrustedKeys, Vec<u8>) {
        let s = Signer::generate();
        let mut keys = TrustedKeys::default();
        keys.add_pem("k1", s.public_pem().as_bytes(), "test")
            .unwrap();
        (s, keys, serde_json::to_vec(&example_bundle()).unwrap())
    }

    fn run(env: &str, keys: &TrustedKeys, stored: Option<Stored>) -> Result<Intake, Refusal> {
        accept(env.as_bytes(), keys, "gw-1", "p-8f2c", NOW, stored)
    }

    #[test]
    fn a_good_plan_is_accepted_in_both_serializations() {
        let (s, keys, bundle) = setup();
        let env = s.sign_compact(&header("k1", "gw-1", 17, NOW + 3600), &bundle);
        let Ok(Intake::New(a)) = run(&env, &keys, None) else {
            panic!("refused")
        };
        assert_eq!(a.header.seq, 17);
        assert_eq!(a.plan.id, "cp-123");
        let mut parts = env.split('.');
        let flat =
            json!({"protected": parts.next(), "payload": parts.next(), "signature": parts.next()});
        assert!(matches!(
            run(&flat.to_string(), &keys, None),
            Ok(Intake::New(_))
        ));
        // The same envelope again (retained redelivery) is not a rollback.
        let stored = Stored {
            seq: 17,
            digest: digest(env.as_bytes()),
        };
        assert!(matches!(run(&env, &keys, Some(stored)), Ok(Intake::Same)));
    }

    #[test]
    fn each_refusal_reason() {
        let (s, keys, bundle) = setup();
        let good = header("k1", "gw-1", 17, NOW + 3600);
        // Bad signature: payload swapped after signing.
        let env = s.sign_compact(&good, &bundle);
        let mut parts: Vec<&str> = env.split('.').collect();
        let other = URL_SAFE_NO_PAD.encode(b"{\"resourceType\":\"Bundle\"}");
        parts[1] = &other;
        assert_eq!(
            run(&parts.join("."), &keys, None).unwrap_err(),
            Refusal::BadSignature
        );
        // A different key with a trusted kid is a bad signature too.
        let mallory = Signer::generate();
        let forged = mallory.sign_compact(&good, &bundle);
        assert_eq!(
            run(&forged, &keys, None).unwrap_err(),
            Refusal::BadSignature
        );
        // Unknown kid.
        let env = s.sign_compact(&header("k9", "gw-1", 17, NOW + 3600), &bundle);
        assert_eq!(run(&env, &keys, None).unwrap_err(), Refusal::UnknownKey);
        // Wrong audience.
        let env = s.sign_compact(&header("k1", "gw-2", 17, NOW + 3600), &bundle);
        assert_eq!(run(&env, &keys, None).unwrap_err(), Refusal::WrongAudience);
        // Expired.
        let env = s.sign_compact(&header("k1", "gw-1", 17, NOW - 1), &bundle);
        assert_eq!(run(&env, &keys, None).unwrap_err(), Refusal::Expired);
        // Rollback.
        let env = s.sign_compact(&good, &bundle);
        let stored = Stored {
            seq: 18,
            digest: [0; 32],
        };
        let r = run(&env, &keys, Some(stored)).unwrap_err();
        assert_eq!(
            r,
            Refusal::NotNewer {
                seq: 17,
                stored: 18
            }
        );
        assert_eq!(r.code(), "rollback");
        let stored = Stored {
            seq: 17,
            digest: [0; 32],
        };
        assert_eq!(
            run(&env, &keys, Some(stored)).unwrap_err().code(),
            "rollback"
        );
        // Unsupported timing.
        let mut b = example_bundle();
        b["entry"][2]["resource"]["occurrenceTiming"] =
            json!({"repeat": {"frequency": 3, "period": 1, "periodUnit": "mo"}});
        let env = s.sign_compact(&good, &serde_json::to_vec(&b).unwrap());
        let r = run(&env, &keys, None).unwrap_err();
        assert_eq!(r.code(), "unsupported-timing");
        assert!(r.to_string().contains("sr-spo2"), "{r}");
        // Malformed: not a JWS, another alg, a bad zone.
        assert_eq!(
            run("nonsense", &keys, None).unwrap_err().code(),
            "malformed"
        );
        let mut h = good.clone();
        h["alg"] = "HS256".into();
        assert_eq!(
            run(&s.sign_compact(&h, &bundle), &keys, None)
                .unwrap_err()
                .code(),
            "malformed"
        );
        let mut h = good.clone();
        h["tz"] = "Mars/Olympus".into();
        assert_eq!(
            run(&s.sign_compact(&h, &bundle), &keys, None)
                .unwrap_err()
                .code(),
            "malformed"
        );
    }

    #[test]
    fn keys_must_be_p256_pem() {
        let mut keys = TrustedKeys::default();
        assert!(keys.add_pem("x", b"not pem", "x").is_err());
        // An Ed25519 SPKI is refused.
        let ed = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            keys.add_pem("x", ed.as_bytes(), "ed"),
            Err(KeyError::NotP256(_))
        ));
        assert!(keys.is_empty());
    }
}
