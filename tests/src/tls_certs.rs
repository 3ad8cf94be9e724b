//! Throwaway certificates for TLS tests, made with the `openssl` command
//! (which `scripts/test` installs): a CA, a server certificate for
//! 127.0.0.1 and a client certificate signed by it, and an unrelated CA.
//! Everything lives in a temporary directory removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A test PKI in a temporary directory.
pub struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    /// Makes the CA, the server (IP 127.0.0.1) and client certificates,
    /// and a second CA that signed neither. P-256 keys (fast to make).
    pub fn generate() -> TestCerts {
        let certs = TestCerts {
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        certs.self_signed_ca("ca", "roomcast test CA");
        certs.self_signed_ca("other-ca", "some other CA");
        certs.signed(
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        certs.signed("client", "roomcast-node", "extendedKeyUsage=clientAuth\n");
        certs
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name.pem` (a certificate) in the directory.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir().join(format!("{name}.pem"))
    }

    /// `name.key` (its private key) in the directory.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir().join(format!("{name}.key"))
    }

    fn self_signed_ca(&self, name: &str, common_name: &str) {
        openssl(
            self.dir(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={common_name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    fn signed(&self, name: &str, common_name: &str, extensions: &str) {
        let extfile = format!("{name}.ext");
        std::fs::write(
            self.dir().join(&extfile),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}"),
        )
        .expect("write the extensions file");
        openssl(
            self.dir(),
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={common_name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            self.dir(),
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("cannot run openssl: install it (scripts/test does: apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
