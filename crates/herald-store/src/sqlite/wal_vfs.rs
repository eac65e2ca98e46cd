//! A thin layer over SQLite's own file layer (its "unix" VFS) that hands the write-ahead log
//! the frames of a commit in one `pwrite` instead of two per page.
//!
//! SQLite appends each page to the log as two writes, a 24-byte frame header and the page, and
//! a commit of a few events writes about twenty pages. Each write is a system call, and since a
//! frame (4,120 bytes) straddles page-cache pages, the kernel's per-page work runs about three
//! times per frame. Here the writes of the log are gathered while they are contiguous and given
//! to the kernel together, at the latest when SQLite syncs the log, which it does at the end of
//! every commit (`synchronous = FULL`), before the commit becomes visible to any reader.
//!
//! What SQLite relies on stays true:
//! - a commit is on disk when `xSync` returns: the gathered frames are written first;
//! - whatever SQLite reads back from the log (rewriting checksums, a page spilled by a large
//!   transaction, a checkpoint) was written: any read, size query, truncation or file control
//!   writes the gathered frames out first;
//! - readers in this or another process see a commit only through the shared-memory index,
//!   which SQLite updates after the sync.
//!
//! This holds only with `synchronous = FULL` in WAL mode (with `NORMAL` SQLite publishes
//! commits without syncing the log); `open_connection` sets both. Only the log is wrapped: the
//! database file and everything else are the unix VFS's own objects, untouched.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_void};
use std::mem::{align_of, size_of};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name connections are opened with.
pub(crate) const NAME: &str = "herald";
const NAME_C: &CStr = c"herald";

/// The most bytes gathered before they are written anyway (a large transaction spilling pages).
const MAX_GATHERED: usize = 1 << 20;
/// The most bytes handed to the unix VFS in one write: it writes at most 128 KiB - 1 per call
/// (it masks the length) and takes a write of exactly 128 KiB for a full disk.
const MAX_WRITE: usize = 124 * 1024;

/// Registers the VFS (once per process) and answers its name, or SQLite's error code.
pub(crate) fn registered() -> Result<&'static str, c_int> {
    static REGISTERED: OnceLock<Result<(), c_int>> = OnceLock::new();
    REGISTERED.get_or_init(register).map(|()| NAME)
}

fn register() -> Result<(), c_int> {
    // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe in SQLite's default
    // (serialized) build; the VFS object is leaked so it lives as long as the process.
    unsafe {
        let real = ffi::sqlite3_vfs_find(ptr::null());
        if real.is_null() {
            return Err(ffi::SQLITE_ERROR);
        }
        let r = &*real;
        let vfs = Box::new(ffi::sqlite3_vfs {
            iVersion: r.iVersion,
            szOsFile: c_int::try_from(LogFile::INNER_OFFSET).map_err(|_| ffi::SQLITE_ERROR)?
                + r.szOsFile,
            mxPathname: r.mxPathname,
            pNext: ptr::null_mut(),
            zName: NAME_C.as_ptr(),
            pAppData: real.cast(),
            xOpen: Some(open),
            // The unix VFS's other entry points ignore the VFS pointer they are given (only
            // its xOpen reads its own pAppData), so they are used as they are.
            xDelete: r.xDelete,
            xAccess: r.xAccess,
            xFullPathname: r.xFullPathname,
            xDlOpen: r.xDlOpen,
            xDlError: r.xDlError,
            xDlSym: r.xDlSym,
            xDlClose: r.xDlClose,
            xRandomness: r.xRandomness,
            xSleep: r.xSleep,
            xCurrentTime: r.xCurrentTime,
            xGetLastError: r.xGetLastError,
            xCurrentTimeInt64: r.xCurrentTimeInt64,
            xSetSystemCall: r.xSetSystemCall,
            xGetSystemCall: r.xGetSystemCall,
            xNextSystemCall: r.xNextSystemCall,
        });
        match ffi::sqlite3_vfs_register(Box::into_raw(vfs), 0) {
            ffi::SQLITE_OK => Ok(()),
            rc => Err(rc),
        }
    }
}

/// The object SQLite holds for an open log: our methods first, then what we gathered, then the
/// unix VFS's own file object, to which every call is passed on.
#[repr(C)]
struct LogFile {
    base: ffi::sqlite3_file,
    gathered: Gathered,
}

/// Contiguous bytes not yet written, and where they go.
struct Gathered {
    offset: i64,
    bytes: Vec<u8>,
}

impl LogFile {
    /// Where the unix VFS's file object starts in the memory SQLite gives `xOpen`.
    const INNER_OFFSET: usize = size_of::<LogFile>().next_multiple_of(align_of::<u64>());

    /// # Safety
    /// `file` must be a `LogFile` opened by `open`.
    unsafe fn from<'a>(file: *mut ffi::sqlite3_file) -> &'a mut LogFile {
        // SAFETY: the caller promises `file` is a live `LogFile`; SQLite never calls one file's
        // methods from two threads at once.
        unsafe { &mut *file.cast::<LogFile>() }
    }

    fn inner(&mut self) -> *mut ffi::sqlite3_file {
        // SAFETY: `open` put the inner file at this offset of the same allocation.
        unsafe {
            ptr::from_mut(self)
                .cast::<u8>()
                .add(Self::INNER_OFFSET)
                .cast()
        }
    }

    fn methods(&mut self) -> &'static ffi::sqlite3_io_methods {
        // SAFETY: an opened unix file always has its methods set, and they are static.
        unsafe { &*(*self.inner()).pMethods }
    }

    /// Writes out what was gathered. The bytes are dropped even if a write fails: SQLite
    /// fails the transaction on the error, and they must not be written later out of order.
    fn flush(&mut self) -> c_int {
        let write = self.methods().xWrite.expect("the unix VFS writes");
        let inner = self.inner();
        let mut rc = ffi::SQLITE_OK;
        let mut offset = self.gathered.offset;
        for chunk in self.gathered.bytes.chunks(MAX_WRITE) {
            let len = chunk.len() as c_int; // at most MAX_WRITE
            // SAFETY: the inner file is open and the chunk is valid for `len` bytes.
            rc = unsafe { write(inner, chunk.as_ptr().cast(), len, offset) };
            if rc != ffi::SQLITE_OK {
                break;
            }
            offset += i64::from(len);
        }
        self.gathered.bytes.clear();
        rc
    }
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite calls xOpen with our VFS (whose pAppData is the unix VFS) and `szOsFile`
    // bytes at `file`, enough for a `LogFile` followed by the unix file object.
    unsafe {
        let real = (*vfs).pAppData.cast::<ffi::sqlite3_vfs>();
        let real_open = (*real).xOpen.expect("the unix VFS opens files");
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            // Anything but the log is the unix VFS's own object, at the start of the memory.
            return real_open(real, name, file, flags, out_flags);
        }
        let inner = file.cast::<u8>().add(LogFile::INNER_OFFSET).cast();
        let rc = real_open(real, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK || (*inner).pMethods.is_null() {
            (*file).pMethods = ptr::null();
            // SQLite does not close a file whose pMethods is NULL; the unix VFS has already
            // released whatever it opened when it failed.
            return if rc == ffi::SQLITE_OK {
                ffi::SQLITE_CANTOPEN
            } else {
                rc
            };
        }
        file.cast::<LogFile>().write(LogFile {
            base: ffi::sqlite3_file {
                pMethods: &LOG_METHODS,
            },
            gathered: Gathered {
                offset: 0,
                bytes: Vec::new(),
            },
        });
        ffi::SQLITE_OK
    }
}

static LOG_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

/// Passes a call on to the unix file's method, answering `missing` if it has none.
macro_rules! pass_on {
    ($file:expr, $method:ident, $missing:expr $(, $arg:expr)*) => {{
        let f = $file;
        match f.methods().$method {
            Some(m) => m(f.inner() $(, $arg)*),
            None => $missing,
        }
    }};
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite passes one of our open logs and `amount` readable bytes at `data`.
    let (f, bytes) = unsafe {
        let len = usize::try_from(amount).unwrap_or(0);
        (
            LogFile::from(file),
            std::slice::from_raw_parts(data.cast::<u8>(), len),
        )
    };
    let g = &f.gathered;
    let contiguous = g.offset + g.bytes.len() as i64 == offset;
    if !g.bytes.is_empty() && !contiguous {
        let rc = f.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if f.gathered.bytes.is_empty() {
        f.gathered.offset = offset;
    }
    f.gathered.bytes.extend_from_slice(bytes);
    if f.gathered.bytes.len() >= MAX_GATHERED {
        return f.flush();
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: SQLite passes one of our open logs.
    let f = unsafe { LogFile::from(file) };
    let rc = f.flush();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    // SAFETY: forwarding to the unix file's own method.
    unsafe { pass_on!(f, xSync, ffi::SQLITE_IOERR_FSYNC, flags) }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite passes one of our open logs.
    let f = unsafe { LogFile::from(file) };
    let rc = f.flush();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    // SAFETY: forwarding to the unix file's own method.
    unsafe { pass_on!(f, xRead, ffi::SQLITE_IOERR_READ, data, amount, offset) }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: SQLite passes one of our open logs.
    let f = unsafe { LogFile::from(file) };
    let rc = f.flush();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    // SAFETY: forwarding to the unix file's own method.
    unsafe { pass_on!(f, xTruncate, ffi::SQLITE_IOERR_TRUNCATE, size) }
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: SQLite passes one of our open logs.
    let f = unsafe { LogFile::from(file) };
    let rc = f.flush();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    // SAFETY: forwarding to the unix file's own method.
    unsafe { pass_on!(f, xFileSize, ffi::SQLITE_IOERR_FSTAT, size) }
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: SQLite passes one of our open logs.
    let f = unsafe { LogFile::from(file) };
    // Rare on a log; whatever it asks is answered about the file as SQLite wrote it.
    let rc = f.flush();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    // SAFETY: forwarding to the unix file's own method.
    unsafe { pass_on!(f, xFileControl, ffi::SQLITE_NOTFOUND, op, arg) }
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: SQLite passes one of our open logs.
    let f = unsafe { LogFile::from(file) };
    let rc = f.flush();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    // SAFETY: forwarding to the unix file's own method; without one, no mapping is given.
    unsafe {
        pass_on!(
            f,
            xFetch,
            {
                *out = ptr::null_mut();
                ffi::SQLITE_OK
            },
            offset,
            amount,
            out
        )
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite passes one of our open logs and never uses it after xClose.
    unsafe {
        let f = LogFile::from(file);
        let flushed = f.flush();
        let closed = pass_on!(&mut *f, xClose, ffi::SQLITE_OK);
        ptr::drop_in_place(ptr::from_mut(f));
        (*file).pMethods = ptr::null();
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

/// Calls that do not touch the log's contents go straight to the unix file.
macro_rules! passed_on {
    ($name:ident, $method:ident, $missing:expr $(, $arg:ident : $ty:ty)*) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: SQLite passes one of our open logs; forwarding to the unix file's method.
            unsafe { pass_on!(LogFile::from(file), $method, $missing $(, $arg)*) }
        }
    };
}

passed_on!(lock, xLock, ffi::SQLITE_OK, level: c_int);
passed_on!(unlock, xUnlock, ffi::SQLITE_OK, level: c_int);
passed_on!(check_reserved_lock, xCheckReservedLock, ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, out: *mut c_int);
passed_on!(sector_size, xSectorSize, 4096);
passed_on!(device_characteristics, xDeviceCharacteristics, 0);
passed_on!(shm_map, xShmMap, ffi::SQLITE_IOERR_SHMMAP, page: c_int, size: c_int, extend: c_int, out: *mut *mut c_void);
passed_on!(shm_lock, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, offset: c_int, n: c_int, flags: c_int);
passed_on!(shm_unmap, xShmUnmap, ffi::SQLITE_OK, delete: c_int);
passed_on!(unfetch, xUnfetch, ffi::SQLITE_OK, offset: i64, p: *mut c_void);

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: SQLite passes one of our open logs; forwarding to the unix file's method.
    unsafe {
        let f = LogFile::from(file);
        if let Some(m) = f.methods().xShmBarrier {
            m(f.inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, params};

    use super::super::open_connection;

    fn count_and_sum(conn: &Connection) -> (i64, i64) {
        conn.query_row("SELECT count(*), coalesce(sum(n), 0) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
    }

    /// Each commit is visible to another connection as soon as it returns, and everything is
    /// still there after the log is checkpointed and the database reopened.
    #[test]
    fn commits_are_seen_by_readers_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = open_connection(&path, false).unwrap();
        let reader = open_connection(&path, true).unwrap();
        writer
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, pad BLOB)")
            .unwrap();
        for i in 1..=200_i64 {
            writer
                .execute(
                    "INSERT INTO t (n, pad) VALUES (?, zeroblob(300))",
                    params![i],
                )
                .unwrap();
            assert_eq!(count_and_sum(&reader), (i, i * (i + 1) / 2));
        }
        drop(reader);
        drop(writer);
        let again = open_connection(&path, false).unwrap();
        assert_eq!(count_and_sum(&again), (200, 200 * 201 / 2));
        let check: String = again
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    /// A transaction larger than the page cache spills pages into the log before it commits and
    /// reads them back (and rewrites some in place); its commit is several megabytes, far more
    /// than one write to the unix VFS may carry.
    #[test]
    fn a_transaction_larger_than_the_cache_commits_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut writer = open_connection(&path, false).unwrap();
        writer
            .execute_batch(
                "PRAGMA cache_size = 20; \
                 CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, pad BLOB)",
            )
            .unwrap();
        let tx = writer.transaction().unwrap();
        for i in 1..=5_000_i64 {
            tx.execute(
                "INSERT INTO t (n, pad) VALUES (?, randomblob(1000))",
                params![i],
            )
            .unwrap();
        }
        // Touches pages spilled above, so they are read back from the log and written again.
        tx.execute("UPDATE t SET n = n * 2 WHERE id % 7 = 0", [])
            .unwrap();
        tx.commit().unwrap();

        let sevens: i64 = (1..=5_000_i64).filter(|i| i % 7 == 0).sum();
        let expected = (5_000, 5_000 * 5_001 / 2 + sevens);
        let reader = open_connection(&path, true).unwrap();
        assert_eq!(count_and_sum(&reader), expected);
        writer
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        drop(reader);
        drop(writer);
        let again = open_connection(&path, false).unwrap();
        assert_eq!(count_and_sum(&again), expected);
        let check: String = again
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    /// A transaction that is rolled back after spilling leaves nothing behind, and the next one
    /// commits normally over the frames it left in the log.
    #[test]
    fn a_rolled_back_spill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut writer = open_connection(&path, false).unwrap();
        writer
            .execute_batch(
                "PRAGMA cache_size = 20; \
                 CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, pad BLOB)",
            )
            .unwrap();
        let tx = writer.transaction().unwrap();
        for i in 1..=2_000_i64 {
            tx.execute(
                "INSERT INTO t (n, pad) VALUES (?, randomblob(1000))",
                params![i],
            )
            .unwrap();
        }
        tx.rollback().unwrap();
        writer
            .execute("INSERT INTO t (n, pad) VALUES (7, NULL)", [])
            .unwrap();
        drop(writer);
        let again = open_connection(&path, true).unwrap();
        assert_eq!(count_and_sum(&again), (1, 7));
    }
}
