//! Real servers for the remote suites, on 127.0.0.1: s3s-fs (started and
//! killed by the tests) and the sshd that scripts/test.d/60-remote starts.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct S3Server {
    pub child: std::process::Child,
    pub root: PathBuf,
    pub port: u16,
}

impl S3Server {
    pub fn start(root: &Path, port: u16) -> S3Server {
        let exe = std::env::var("CLN_REPLICA_S3S_FS").expect("CLN_REPLICA_S3S_FS names the s3s-fs binary");
        std::fs::create_dir_all(root.join("bucket")).unwrap();
        let child = Command::new(exe)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "testkey", "--secret-key", "testsecret"])
            .arg(root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server { child, root: root.to_path_buf(), port }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: one that stops answering.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        // The server may have been killed already (then there is nothing to signal).
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }

    pub fn destination(&self, prefix: &str) -> String {
        format!(
            "[[destination]]\nurl = \"s3://bucket/{prefix}\"\nendpoint = \"http://127.0.0.1:{}\"\nregion = \"us-east-1\"\n\
             access_key_id = \"testkey\"\nsecret_access_key = \"testsecret\"\n",
            self.port
        )
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://bucket/{prefix}?endpoint=http://127.0.0.1:{}&region=us-east-1", self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        self.kill();
    }
}

pub fn s3_env() {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testkey");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testsecret");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The sshd's SFTP URL (a directory it serves) and the client key, from scripts/test.d/60-remote.
pub fn sftp() -> (String, String) {
    let url = std::env::var("CLN_REPLICA_SFTP_URL").expect("CLN_REPLICA_SFTP_URL");
    let key = std::env::var("CLN_REPLICA_SFTP_KEY").expect("CLN_REPLICA_SFTP_KEY");
    (url, key)
}
