//! Signature verification of client assertions with `ring` instead of RustCrypto.
//!
//! `jsonwebtoken` 10 lets the process choose its crypto provider. Its RustCrypto backend verifies
//! an ES384 signature in about 2 ms, which held token issue at ~920 tokens/s on two cores
//! (`bash benches/smart.sh`); `ring`, which rustls already links into this binary, verifies
//! ECDSA P-384 and RSA PKCS#1 in a fraction of that. This provider verifies ES384, ES256 and
//! RS256/384/512 with `ring` and hands everything else (HS256 for the gateway's own tokens,
//! signing in the tests) to the RustCrypto provider.

use std::sync::OnceLock;

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature as signature_trait;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};

enum Key {
    Ec(&'static dyn VerificationAlgorithm, Vec<u8>),
    Rsa(&'static signature::RsaParameters, Vec<u8>, Vec<u8>),
}

struct RingVerifier {
    alg: Algorithm,
    key: Key,
}

impl signature_trait::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature_trait::Error> {
        let ok = match &self.key {
            Key::Ec(alg, point) => UnparsedPublicKey::new(*alg, point).verify(msg, sig).is_ok(),
            Key::Rsa(params, n, e) => RsaPublicKeyComponents { n, e }.verify(params, msg, sig).is_ok(),
        };
        if ok { Ok(()) } else { Err(signature_trait::Error::new()) }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let fallback = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.verifier_factory;
    let ec = |v: &'static dyn VerificationAlgorithm| match key.kind() {
        DecodingKeyKind::SecretOrDer(point) => Ok(Key::Ec(v, point.clone())),
        DecodingKeyKind::RsaModulusExponent { .. } => Err(Error::from(ErrorKind::InvalidKeyFormat)),
    };
    let rsa = |p: &'static signature::RsaParameters| match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => Ok(Key::Rsa(p, n.clone(), e.clone())),
        // A DER public key (from PEM): leave it to the RustCrypto provider.
        DecodingKeyKind::SecretOrDer(_) => Err(Error::from(ErrorKind::InvalidKeyFormat)),
    };
    let built = match alg {
        Algorithm::ES384 => ec(&signature::ECDSA_P384_SHA384_FIXED),
        Algorithm::ES256 => ec(&signature::ECDSA_P256_SHA256_FIXED),
        Algorithm::RS256 => rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        _ => return fallback(alg, key),
    };
    match built {
        Ok(k) => Ok(Box::new(RingVerifier { alg: *alg, key: k })),
        Err(_) => fallback(alg, key),
    }
}

/// Makes this provider the process's `jsonwebtoken` provider, unless one was chosen already
/// (then that one stays; it is correct, only slower).
pub fn install() {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    let base = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
    let provider = PROVIDER.get_or_init(|| CryptoProvider {
        signer_factory: base.signer_factory,
        verifier_factory: verifier,
        jwk_utils: base.jwk_utils.clone(),
    });
    let _ = provider.install_default();
}
