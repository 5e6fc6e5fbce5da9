//! The PKCS#11 module registry (one `C_Initialize` per module and process) and the pool of
//! logged-in read/write sessions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::HsmError;
use crate::error::{from_ck, rv_of};

/// How long [`Pool::run`] waits for a free session before giving up.
const CHECKOUT_WAIT: Duration = Duration::from_secs(30);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held, and the guarded state stays consistent even if
    // something did, so a poisoned lock is simply taken over.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A loaded and initialised PKCS#11 module.
#[derive(Clone)]
pub(crate) struct Module {
    pub(crate) ctx: Pkcs11,
    /// Serialises operations that create, destroy or search token objects, for modules that
    /// need it (see `Hsm::open`). Shared by every `Hsm` on the module.
    pub(crate) structure: Arc<Mutex<()>>,
}

/// Loaded and initialised modules, by path. PKCS#11 allows one `C_Initialize` per module and
/// process, and SoftHSM2 keeps global state, so every [`crate::Hsm`] on the same module shares
/// one context, which is never finalised.
static MODULES: OnceLock<Mutex<HashMap<PathBuf, Module>>> = OnceLock::new();

/// Loads and initialises `module`, or returns the context already made for it.
pub(crate) fn load_module(module: &Path) -> Result<Module, HsmError> {
    let err = |reason: String| HsmError::ModuleLoad {
        module: module.to_path_buf(),
        reason,
    };
    let mut modules = lock(MODULES.get_or_init(Default::default));
    if let Some(m) = modules.get(module) {
        return Ok(m.clone());
    }
    if !module.is_file() {
        return Err(err(
            "the file does not exist (is the HSM's PKCS#11 library installed?)".to_string(),
        ));
    }
    let ctx = Pkcs11::new(module).map_err(|e| err(e.to_string()))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        // Someone else in this process (another library) initialised it already: fine.
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(err(format!("C_Initialize failed: {}", from_ck(e)))),
    }
    let m = Module {
        ctx,
        structure: Arc::new(Mutex::new(())),
    };
    modules.insert(module.to_path_buf(), m.clone());
    Ok(m)
}

/// A failure inside a pooled operation: a PKCS#11 error (which [`Pool::run`] may recover from
/// by logging in again or reopening the session) or a final error.
pub(crate) enum OpError {
    Ck(CkError),
    Hsm(HsmError),
}

impl From<CkError> for OpError {
    fn from(e: CkError) -> Self {
        Self::Ck(e)
    }
}

impl From<HsmError> for OpError {
    fn from(e: HsmError) -> Self {
        Self::Hsm(e)
    }
}

impl From<OpError> for HsmError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Ck(e) => from_ck(e),
            OpError::Hsm(e) => e,
        }
    }
}

struct State {
    idle: Vec<Session>,
    /// Sessions that exist: idle plus checked out.
    open: usize,
}

/// A fixed-size pool of R/W sessions on one token, logged in as the user.
///
/// PKCS#11 login state belongs to the application and token, not to a session: the first
/// `C_Login` logs every session in, later ones answer `CKR_USER_ALREADY_LOGGED_IN`, and closing
/// the last session logs out. The pool therefore logs in once per new session (tolerating
/// "already logged in") and never calls `C_Logout`.
pub(crate) struct Pool {
    ctx: Pkcs11,
    slot: Slot,
    pin: AuthPin,
    label: String,
    max: usize,
    state: Mutex<State>,
    freed: Condvar,
}

impl Pool {
    /// Opens `max` sessions and logs in (which checks the PIN).
    pub(crate) fn open(
        ctx: Pkcs11,
        slot: Slot,
        pin: AuthPin,
        label: String,
        max: usize,
    ) -> Result<Self, HsmError> {
        let pool = Self {
            ctx,
            slot,
            pin,
            label,
            max,
            state: Mutex::new(State {
                idle: Vec::with_capacity(max),
                open: 0,
            }),
            freed: Condvar::new(),
        };
        let mut sessions = Vec::with_capacity(max);
        for _ in 0..max {
            sessions.push(pool.new_session()?);
        }
        {
            let mut st = lock(&pool.state);
            st.open = sessions.len();
            st.idle = sessions;
        }
        Ok(pool)
    }

    pub(crate) fn size(&self) -> usize {
        self.max
    }

    fn new_session(&self) -> Result<Session, HsmError> {
        let s = self.ctx.open_rw_session(self.slot).map_err(from_ck)?;
        self.login(&s)?;
        Ok(s)
    }

    /// `C_FindObjects` that never mistakes "logged out" for "not there": a token hides private
    /// objects from a session that is not logged in (after a `C_Logout` anywhere in the
    /// process, or a token reset) and simply finds nothing. So when nothing is found, the
    /// session state is checked, and the search repeated after logging in again if needed.
    pub(crate) fn find(
        &self,
        s: &Session,
        template: &[Attribute],
    ) -> Result<Vec<ObjectHandle>, OpError> {
        let found = s.find_objects(template)?;
        if !found.is_empty() {
            return Ok(found);
        }
        let state = s.get_session_info()?.session_state();
        if matches!(state, SessionState::RwUser | SessionState::RoUser) {
            return Ok(found);
        }
        self.login(s)?;
        Ok(s.find_objects(template)?)
    }

    fn login(&self, s: &Session) -> Result<(), HsmError> {
        match s.login(UserType::User, Some(&self.pin)) {
            Ok(()) => Ok(()),
            Err(e) => match rv_of(&e) {
                Some(RvError::UserAlreadyLoggedIn) => Ok(()),
                Some(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange) => {
                    Err(HsmError::WrongPin {
                        label: self.label.clone(),
                    })
                }
                Some(RvError::PinLocked) => Err(HsmError::PinLocked {
                    label: self.label.clone(),
                }),
                Some(RvError::UserPinNotInitialized) => Err(HsmError::TokenUnusable {
                    label: self.label.clone(),
                    reason: "its user PIN is not initialised".to_string(),
                }),
                _ => Err(from_ck(e)),
            },
        }
    }

    fn checkout(&self) -> Result<Lease<'_>, HsmError> {
        let deadline = Instant::now() + CHECKOUT_WAIT;
        let mut st = lock(&self.state);
        loop {
            if let Some(s) = st.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    session: Some(s),
                });
            }
            if st.open < self.max {
                // Replace a session that was discarded; open it without holding the lock.
                st.open += 1;
                drop(st);
                return match self.new_session() {
                    Ok(s) => Ok(Lease {
                        pool: self,
                        session: Some(s),
                    }),
                    Err(e) => {
                        lock(&self.state).open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HsmError::Busy {
                    waited_secs: CHECKOUT_WAIT.as_secs(),
                    pool_size: self.max,
                });
            }
            st = self
                .freed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn discard_idle(&self) {
        let idle = {
            let mut st = lock(&self.state);
            let idle = std::mem::take(&mut st.idle);
            st.open -= idle.len();
            idle
        };
        drop(idle);
        self.freed.notify_all();
    }

    /// Runs `op` on a pooled session. If the token says the session is gone
    /// (`CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`) the session is replaced, and if it
    /// says the user is not logged in (`CKR_USER_NOT_LOGGED_IN`, e.g. after another part of the
    /// process logged out) it logs in again; either way `op` runs once more. `op` must
    /// therefore be safe to repeat after such a failure (every caller's is).
    pub(crate) fn run<T>(
        &self,
        mut op: impl FnMut(&Session) -> Result<T, OpError>,
    ) -> Result<T, HsmError> {
        let mut lease = self.checkout()?;
        let first = match lease.session() {
            Some(s) => op(s),
            None => return Err(lease_lost()),
        };
        let rv = match &first {
            Err(OpError::Ck(e)) => rv_of(e),
            _ => None,
        };
        match rv {
            Some(RvError::SessionHandleInvalid | RvError::SessionClosed) => {
                // Sessions rarely die alone (token reset, C_CloseAllSessions): drop the idle
                // ones too, so the retry and later calls get freshly opened sessions.
                lease.discard();
                self.discard_idle();
                let mut fresh = self.checkout()?;
                let r = match fresh.session() {
                    Some(s) => op(s),
                    None => return Err(lease_lost()),
                };
                discard_if_dead(&mut fresh, &r);
                r.map_err(HsmError::from)
            }
            Some(RvError::UserNotLoggedIn) => {
                let Some(s) = lease.session() else {
                    return Err(lease_lost());
                };
                self.login(s)?;
                let r = op(s);
                discard_if_dead(&mut lease, &r);
                r.map_err(HsmError::from)
            }
            _ => first.map_err(HsmError::from),
        }
    }
}

fn lease_lost() -> HsmError {
    HsmError::Pkcs11 {
        function: "session pool".to_string(),
        code: "no session in lease".to_string(),
    }
}

fn discard_if_dead<T>(lease: &mut Lease<'_>, r: &Result<T, OpError>) {
    if let Err(OpError::Ck(e)) = r
        && matches!(
            rv_of(e),
            Some(RvError::SessionHandleInvalid | RvError::SessionClosed)
        )
    {
        lease.discard();
    }
}

/// A checked-out session; returned to the pool on drop (or discarded).
struct Lease<'a> {
    pool: &'a Pool,
    session: Option<Session>,
}

impl Lease<'_> {
    fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Drops the session instead of returning it; the pool opens a replacement on demand.
    fn discard(&mut self) {
        if let Some(s) = self.session.take() {
            drop(s);
            lock(&self.pool.state).open -= 1;
            self.pool.freed.notify_one();
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            lock(&self.pool.state).idle.push(s);
            self.pool.freed.notify_one();
        }
    }
}
