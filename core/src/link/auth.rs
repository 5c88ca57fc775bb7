//! Mutual challenge-response for the link: both sides prove they hold the
//! shared key without sending it. The slave sends a nonce in `Hello`; the
//! master answers with its own nonce and a proof over both; the slave checks
//! the proof and answers with its own MAC. Each MAC is bound to its role and
//! the slave's name, so a proof cannot be reflected back or replayed for
//! another slave, and fresh nonces stop replay across connections.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Nonce;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], role: &[u8], first: &Nonce, second: &Nonce, name: &str) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(role);
    m.update(first);
    m.update(second);
    m.update(&(name.len() as u32).to_be_bytes());
    m.update(name.as_bytes());
    m
}

/// The master's proof: it knows the key.
pub fn master_proof(key: &[u8], slave_nonce: &Nonce, master_nonce: &Nonce, name: &str) -> Vec<u8> {
    mac(key, b"dftpd-master", slave_nonce, master_nonce, name)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// The slave's answer to the master's challenge.
pub fn slave_proof(key: &[u8], slave_nonce: &Nonce, master_nonce: &Nonce, name: &str) -> Vec<u8> {
    mac(key, b"dftpd-slave", master_nonce, slave_nonce, name)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// Constant-time check of a master proof.
pub fn verify_master(
    key: &[u8],
    slave_nonce: &Nonce,
    master_nonce: &Nonce,
    name: &str,
    proof: &[u8],
) -> bool {
    mac(key, b"dftpd-master", slave_nonce, master_nonce, name)
        .verify_slice(proof)
        .is_ok()
}

/// Constant-time check of a slave proof.
pub fn verify_slave(
    key: &[u8],
    slave_nonce: &Nonce,
    master_nonce: &Nonce,
    name: &str,
    proof: &[u8],
) -> bool {
    mac(key, b"dftpd-slave", master_nonce, slave_nonce, name)
        .verify_slice(proof)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_right_key_role_and_name() {
        let (sn, mn) = ([1u8; 32], [2u8; 32]);
        let p = slave_proof(b"k", &sn, &mn, "s1");
        assert!(verify_slave(b"k", &sn, &mn, "s1", &p));
        assert!(!verify_slave(b"other", &sn, &mn, "s1", &p));
        assert!(!verify_slave(b"k", &sn, &mn, "s2", &p));
        assert!(!verify_slave(b"k", &mn, &sn, "s1", &p));
        // A master proof is not a slave proof (no reflection).
        let m = master_proof(b"k", &sn, &mn, "s1");
        assert!(verify_master(b"k", &sn, &mn, "s1", &m));
        assert!(!verify_slave(b"k", &sn, &mn, "s1", &m));
        assert!(!verify_master(b"k", &sn, &mn, "s1", &m[..10]));
    }
}
