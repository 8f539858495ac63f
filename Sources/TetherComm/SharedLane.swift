import CTetherProcess
import CXXHash
import Foundation
import TetherMessages

#if canImport(Glibc)
    import Glibc
#endif

/// A one-way shared-memory lane from a rank to its right neighbour on the same host, beside their unix
/// socket (NCCL's SHM transport does the like): the sender copies a chunk's payload into the lane's next
/// free slot and sends only the header over the socket (`ChunkHeader.laneSlot`, the payload frame
/// empty); the receiver reads the payload where it lies. A unix socket copies every byte twice (into
/// the kernel, out of it into libzmq's buffer); the lane copies it once. When no slot is free the
/// chunk goes over the socket as before (only `Ring`'s first ring step waits for a slot, where that
/// cannot deadlock).
///
/// The file is in /dev/shm (memory, not disk), named from the receiver's socket path and the user.
/// The sender makes it before its handshake (mode 0600, `O_EXCL`: a name another user holds means no
/// lane) with its pages reserved up front, sized to at most half of what /dev/shm has free (a full
/// /dev/shm, 64 MB in a container by default, means no lane, not a SIGBUS later). The receiver maps
/// it when that handshake arrives, only after checking that it is this user's own, private and of
/// its slot size, and unlinks it at once, so nothing of it outlives the two processes. A sender whose
/// lane was never opened unlinks it when it closes (unless a chunk naming it may still be on its way);
/// one killed before that holds no lock on it any more (the sender keeps a shared `flock` on its lane
/// while it lives), and the first lane made on this host by this user an hour later removes it
/// (`removeAbandoned`). A lane is made under a temporary name, locked, then renamed into place, so no
/// sweep can take a lane whose maker is alive.
///
/// Layout: a control page (magic, slots, slot size; at byte 64 the count of slots the receiver is
/// done with, written by the receiver alone), then `slots` slots of `slotBytes` (page-aligned).
/// Trust: only this user can open the file, and this user could as well ptrace either process; the
/// receiver still range-checks everything it reads from the header, and checks the payload's XXH3.
final class SharedLane {
    let path: String
    let slots: Int, slotBytes: Int
    private let base: UnsafeMutableRawPointer, length: Int
    /// the sender's open file, holding its shared lock for as long as the lane lives (-1: the receiver's)
    private let lockFD: Int32

    private static let magic: UInt64 = 0x454e_414c_5254_4554  // "TETRLANE", little-endian
    private static let page = 4096
    private static let consumedOffset = 64

    /// The lane into the rank listening on `socketPath` (an ipc:// address's path).
    static func path(forSocket socketPath: String) -> String {
        let hash = socketPath.withCString { XXH3_64bits($0, strlen($0)) }
        return "/dev/shm/" + namePrefix + String(hash, radix: 16)
    }

    private static func slotStride(_ slotBytes: Int) -> Int { (slotBytes + page - 1) / page * page }
    /// The file's length; nil when it does not fit an Int (the chunk size is the user's to set).
    private static func length(slots: Int, slotBytes: Int) -> Int? {
        guard slotBytes <= Int.max - page else { return nil }
        let (all, overflow) = slots.multipliedReportingOverflow(by: slotStride(slotBytes))
        return overflow || all > Int.max - page ? nil : page + all
    }

    private init(path: String, slots: Int, slotBytes: Int, base: UnsafeMutableRawPointer, length: Int, lockFD: Int32 = -1) {
        (self.path, self.slots, self.slotBytes, self.base, self.length, self.lockFD) = (path, slots, slotBytes, base, length, lockFD)
    }

    deinit {
        munmap(base, length)
        guard lockFD >= 0 else { return }
        // The name may stay for the receiver (a chunk naming the lane still on its way): its grace
        // before a sweep counts from now, set before the lock goes.
        futimens(lockFD, nil)
        close(lockFD)
    }

    /// How long a lane must lie unlocked and untouched before a sweep removes it. A lane's lock goes
    /// while its name may still be wanted: a sender whose ring closed (or whose process ended) before
    /// the receiver took the handshake leaves its last chunks in it. The receiver takes them within its
    /// ring's timeout (30 s by default); an hour is far past any that a job sets.
    static let abandonedAfter: time_t = 3600

    private static var namePrefix: String { "tether-lane-\(getuid())-" }

    /// The sender's side: a new lane into the rank listening on `socketPath`, of at most `slots` slots,
    /// or nil where none can be made (no /dev/shm, the name held by another user, no memory left there).
    /// A lane takes at most half of what /dev/shm has free (other programs use it too; a container's
    /// is 64 MB unless `--shm-size` says otherwise): fewer slots where that is less, none under two.
    static func create(forSocket socketPath: String, slots most: Int, slotBytes: Int) -> SharedLane? {
        var fs = statvfs()
        guard most > 0, slotBytes > 0, slotBytes <= Int.max - page, statvfs("/dev/shm", &fs) == 0 else { return nil }
        let (free, overflow) = Int(clamping: fs.f_bavail).multipliedReportingOverflow(by: Int(clamping: fs.f_frsize))
        let fitting = ((overflow ? Int.max : free) / 2 - page) / slotStride(slotBytes)
        let slots = min(most, fitting)
        guard slots >= 2, let length = length(slots: slots, slotBytes: slotBytes) else { return nil }
        removeAbandoned()
        let path = path(forSocket: socketPath), made = path + ".new-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = Glibc.open(made, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
        // Locked before it has a size, renamed into place after: a sweep finds it new or locked.
        guard flock(fd, LOCK_SH) == 0, posix_fallocate(fd, 0, off_t(length)) == 0,
            let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED
        else {
            unlink(made)
            close(fd)
            return nil
        }
        let control = p.assumingMemoryBound(to: UInt64.self)
        (control[0], control[1], control[2]) = (magic, UInt64(slots), UInt64(slotBytes))
        // replaces a lane an earlier ring of this user's left at this name (another user's stays: the
        // rename fails, /dev/shm is sticky)
        guard rename(made, path) == 0 else {
            unlink(made)
            munmap(p, length)
            close(fd)
            return nil
        }
        HostFiles.made(path)
        return SharedLane(path: path, slots: slots, slotBytes: slotBytes, base: p, length: length, lockFD: fd)
    }

    /// Removes this user's lanes in /dev/shm whose makers are gone: a living maker holds a shared lock
    /// on its lane, which the kernel drops when the process dies, however it dies; one unlocked and
    /// untouched for `abandonedAfter` is wanted by no receiver either. A lane the receiver opened has no
    /// name left, so only lanes never opened are found (the 32 MB a killed rank left).
    static func removeAbandoned() {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm") else { return }
        let oldest = time(nil) - abandonedAfter
        for name in names where name.hasPrefix(namePrefix) {
            let path = "/dev/shm/" + name
            let fd = Glibc.open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            // the time is read once the lock is had: a maker sets it before its lock goes
            var info = stat(), named = stat()
            guard flock(fd, LOCK_EX | LOCK_NB) == 0, fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG,
                info.st_uid == getuid(), info.st_mtim.tv_sec < oldest,
                stat(path, &named) == 0, named.st_ino == info.st_ino, named.st_dev == info.st_dev
            else { continue }
            unlink(path)
        }
    }

    /// Why a lane was refused, for the receiver's error.
    struct Refusal: Error {
        let reason: String
        /// there is no lane by that name (the sender made none)
        var missing = false
    }

    /// The receiver's side: maps the lane the left neighbour made into the socket at `socketPath`, if it
    /// is this user's own and private, of slots of `slotBytes`, at most `most` of them (the sender may
    /// have made fewer), and as long as they say; then unlinks it.
    static func open(forSocket socketPath: String, slots most: Int, slotBytes: Int) throws(Refusal) -> SharedLane {
        let path = path(forSocket: socketPath)
        let fd = Glibc.open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw Refusal(reason: "\(path): \(String(cString: strerror(errno)))", missing: errno == ENOENT) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_uid == getuid(), info.st_mode & 0o077 == 0 else {
            throw Refusal(reason: "\(path) is not a private file of this user's")
        }
        // the control page's first words: magic, slots, slot size (the sender's: checked before use)
        var control = [UInt64](repeating: 0, count: 3)
        guard control.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, $0.count, 0) }) == 24, control[0] == magic,
            control[2] == UInt64(slotBytes), control[1] >= 2, control[1] <= UInt64(max(most, 0))
        else {
            throw Refusal(reason: "\(path) is not a lane of at most \(most) slots of \(slotBytes) bytes")
        }
        let slots = Int(control[1])
        guard let length = length(slots: slots, slotBytes: slotBytes), info.st_size == off_t(length) else {
            throw Refusal(reason: "\(path) has \(info.st_size) bytes, not the \(slots) slots of \(slotBytes) bytes it says")
        }
        guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw Refusal(reason: "\(path) cannot be mapped: \(String(cString: strerror(errno)))")
        }
        unlink(path)
        return SharedLane(path: path, slots: slots, slotBytes: slotBytes, base: p, length: length)
    }

    /// The `number`-th slot used on this lane (from 0), `slotBytes` long.
    func slot(_ number: UInt64) -> UnsafeMutableRawPointer {
        base + Self.page + Int(number % UInt64(slots)) * Self.slotStride(slotBytes)
    }

    /// How many slots the receiver is done with (it may reuse none of them before; the sender none after).
    var consumed: UInt64 {
        get { tether_shared_load((base + Self.consumedOffset).assumingMemoryBound(to: UInt64.self)) }
        set { tether_shared_store((base + Self.consumedOffset).assumingMemoryBound(to: UInt64.self), newValue) }
    }

    /// Removes the name (the sender's, when the receiver never opened it); the mapping stays.
    func unlinkName() {
        unlink(path)
        HostFiles.gone(path)
    }
}
