//! Test support: an isolated SoftHSM token per test (each test body runs in its own child
//! process, because a PKCS#11 module is initialised once per process and SoftHSM reads
//! `SOFTHSM2_CONF` then), and the conformance suite both key stores must pass.
//!
//! Environment:
//! - `VVGATE_PKCS11_MODULE`: the module (default `/usr/lib/softhsm/libsofthsm2.so`). If the
//!   file does not exist the PKCS#11 tests FAIL: CI installs softhsm2.
//! - `VVGATE_PKCS11_TOKEN` + `VVGATE_PKCS11_PIN`: run against an existing token (a real
//!   HSM) instead of a throwaway SoftHSM token; see `hw-tests/README.md`.

#![allow(dead_code, unreachable_pub)]

pub mod conformance;

use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::Attribute;
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use vvgate_hsm::ceremony::{self, Ceremony, Officers, PinShare};
use vvgate_hsm::pkcs11::{Pkcs11Config, Pkcs11KeyStore, Purpose, TokenSelector};
use vvgate_hsm::KeyRef;

/// The SO PIN of throwaway tokens.
pub const SO_PIN: &str = "so-secret-4321";
/// The user PIN of throwaway tokens.
pub const USER_PIN: &str = "user-secret-8765";
/// The label of throwaway tokens.
pub const LABEL: &str = "vvgate-test";

const CHILD_ENV: &str = "VVGATE_HSM_TEST_CHILD";
const DIR_ENV: &str = "VVGATE_HSM_TEST_DIR";

/// The module under test; panics (fails the test) with a clear message when it is absent.
pub fn module() -> PathBuf {
    let m = std::env::var_os("VVGATE_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    assert!(
        m.exists(),
        "PKCS#11 module {} not found: install softhsm2 (apt-get install softhsm2 opensc) or set \
         VVGATE_PKCS11_MODULE to a module; the PKCS#11 tests do not skip",
        m.display()
    );
    m
}

/// A token to test against: a fresh SoftHSM token, or the external one named in the env.
pub struct TestToken {
    pub module: PathBuf,
    pub selector: TokenSelector,
    pub user_pin: String,
    /// `None` for an external token (SO operations are not run there).
    pub so_pin: Option<String>,
    pub dir: PathBuf,
    pub officers: Officers,
    created: RefCell<Vec<Vec<u8>>>,
}

impl TestToken {
    pub fn external(&self) -> bool {
        self.so_pin.is_none()
    }

    /// The user PIN in a 0600 file, as systemd would provide it.
    pub fn pin_file(&self) -> PathBuf {
        self.pin_file_with(&self.user_pin, "hsm-pin")
    }

    pub fn pin_file_with(&self, pin: &str, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        vvgate_hsm::file::write_private(&p, format!("{pin}\n").as_bytes()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    pub fn config(&self) -> Pkcs11Config {
        Pkcs11Config {
            module: self.module.clone(),
            token: self.selector.clone(),
            pin_file: self.pin_file(),
        }
    }

    pub fn open_store(&self) -> Pkcs11KeyStore {
        Pkcs11KeyStore::open(&self.config()).expect("open the PKCS#11 key store")
    }

    pub fn shares(&self) -> (PinShare, PinShare) {
        ceremony::split_pin(&self.user_pin).unwrap()
    }

    /// A ceremony session unlocked with both officers' shares.
    pub fn ceremony(&self) -> Ceremony {
        let (a, b) = self.shares();
        Ceremony::open(&self.module, &self.selector, self.officers.clone(), &a, &b)
            .expect("open a ceremony")
    }

    /// Remember a `CKA_ID` to destroy when the test ends (external tokens only).
    pub fn created(&self, id: &[u8]) {
        self.created.borrow_mut().push(id.to_vec());
    }

    /// Generate the next free version of `purpose`; its reference.
    pub fn fresh_key(&self, c: &Ceremony, purpose: Purpose) -> KeyRef {
        let next = c.versions(purpose).unwrap().last().map_or(1, |v| v + 1);
        let t = c
            .generate(purpose, next, &format!("test {}", purpose.name()))
            .unwrap();
        assert_eq!(t.keys.len(), 1);
        let id = purpose.id(next);
        self.created(&id);
        KeyRef::Pkcs11 { id }
    }

    /// Run `f` on a direct cryptoki read-write user session (for loose keys that the
    /// ceremonies refuse to make). No key store may be open in this process meanwhile.
    pub fn raw_session<R>(&self, f: impl FnOnce(&Session) -> R) -> R {
        self.raw_session_kind(true, f)
    }

    pub fn raw_session_kind<R>(&self, rw: bool, f: impl FnOnce(&Session) -> R) -> R {
        let ctx = Pkcs11::new(&self.module).unwrap();
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap();
        let slot = self.slot(&ctx);
        let r = {
            let s = if rw {
                ctx.open_rw_session(slot).unwrap()
            } else {
                ctx.open_ro_session(slot).unwrap()
            };
            s.login(UserType::User, Some(&AuthPin::from(self.user_pin.as_str())))
                .unwrap();
            let r = f(&s);
            let _ = s.logout();
            r
        };
        ctx.finalize().unwrap();
        r
    }

    /// Token flags, read without logging in: `(user_pin_count_low, user_pin_locked)`.
    pub fn pin_flags(&self) -> (bool, bool) {
        let ctx = Pkcs11::new(&self.module).unwrap();
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap();
        let info = ctx.get_token_info(self.slot(&ctx)).unwrap();
        let r = (info.user_pin_count_low(), info.user_pin_locked());
        ctx.finalize().unwrap();
        r
    }

    fn slot(&self, ctx: &Pkcs11) -> cryptoki::slot::Slot {
        ctx.get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s).is_ok_and(|i| match &self.selector {
                    TokenSelector::Label(l) => i.label().trim_end() == l,
                    TokenSelector::Serial(n) => i.serial_number().trim_end() == n,
                })
            })
            .expect("test token present")
    }

    fn cleanup(&self) {
        let ids = self.created.take();
        if ids.is_empty() {
            return;
        }
        self.raw_session(|s| {
            for id in ids {
                for h in s.find_objects(&[Attribute::Id(id)]).unwrap_or_default() {
                    let _ = s.destroy_object(h);
                }
            }
        });
    }
}

/// Run `body` against its own token, in a child process of this test binary. `name` must be
/// the test function's name (the child runs exactly that test).
pub fn isolated(name: &str, body: fn(&TestToken)) {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        let dir = PathBuf::from(std::env::var(DIR_ENV).expect("test dir"));
        let token = child_token(dir);
        body(&token);
        if token.external() {
            token.cleanup();
        }
        return;
    }
    let module = module();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir =
        std::env::temp_dir().join(format!("vvgate-hsm-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .env(DIR_ENV, &dir)
        .env("VVGATE_PKCS11_MODULE", &module);
    if std::env::var_os("VVGATE_PKCS11_TOKEN").is_none() {
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                dir.join("tokens").display()
            ),
        )
        .unwrap();
        cmd.env("SOFTHSM2_CONF", &conf);
    }
    let out = cmd.output().expect("run the test child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "test child {name} failed ({}); token directory kept at {}",
        out.status,
        dir.display()
    );
    assert!(
        stdout.contains("1 passed"),
        "test child {name} did not run exactly one test"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn child_token(dir: PathBuf) -> TestToken {
    let module = module();
    let officers = Officers::new("Security officer", "Platform officer").unwrap();
    if let Ok(label) = std::env::var("VVGATE_PKCS11_TOKEN") {
        let pin = std::env::var("VVGATE_PKCS11_PIN")
            .expect("VVGATE_PKCS11_PIN must hold the user PIN of VVGATE_PKCS11_TOKEN");
        return TestToken {
            module,
            selector: TokenSelector::parse(&label),
            user_pin: pin,
            so_pin: None,
            dir,
            officers,
            created: RefCell::new(Vec::new()),
        };
    }
    let t = ceremony::init_token(
        &module,
        LABEL,
        &AuthPin::from(SO_PIN),
        &AuthPin::from(USER_PIN),
        &officers,
    )
    .expect("initialise the throwaway token");
    assert_eq!(t.ceremony, "init-token");
    assert!(t.token.starts_with(&format!("label={LABEL} serial=")));
    TestToken {
        module,
        selector: TokenSelector::Label(LABEL.into()),
        user_pin: USER_PIN.into(),
        so_pin: Some(SO_PIN.into()),
        dir,
        officers,
        created: RefCell::new(Vec::new()),
    }
}

/// Say that a test does not apply to an external token.
pub fn not_on_external(token: &TestToken, what: &str) -> bool {
    if token.external() {
        println!("not run against an external token: {what}");
        return true;
    }
    false
}

/// The path of a file in `dir`.
pub fn path_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
