import Foundation

/// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length N, N bytes
/// of JSON mapping each tensor name to {dtype, shape, data_offsets: [begin, end]} (offsets relative to
/// the byte after the header) plus an optional "__metadata__" string map, then the data. PyTorch loads
/// it with `safetensors.torch.load_file`.
public enum Safetensors {
    public struct Tensor: Equatable, Sendable {
        public var dtype: String
        public var shape: [Int]
        public var data: Data
        public init(dtype: String, shape: [Int], data: Data) { (self.dtype, self.shape, self.data) = (dtype, shape, data) }

        public init(floats: [Float], shape: [Int]) {
            precondition(shape.reduce(1, *) == floats.count)
            self.init(dtype: "F32", shape: shape, data: floats.withUnsafeBytes { Data($0) })
        }

        /// The values of an F32 tensor (little-endian, as every supported host is).
        public func floats() throws -> [Float] {
            guard dtype == "F32" else { throw SafetensorsError.unexpectedDType(expected: "F32", found: dtype) }
            return data.withUnsafeBytes { raw in Array(raw.bindMemory(to: Float.self)) }
        }
    }

    public struct File: Equatable, Sendable {
        public var tensors: [String: Tensor]
        public var metadata: [String: String]
        public init(tensors: [String: Tensor] = [:], metadata: [String: String] = [:]) {
            (self.tensors, self.metadata) = (tensors, metadata)
        }
    }

    /// Bounds on what `decode` accepts.
    public static let maxHeaderBytes = 8 << 20, maxTensors = 100_000

    static let elementSizes = ["F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1]

    /// Serializes; tensors are laid out in name order so the same content gives the same bytes.
    public static func encode(_ file: File) -> Data {
        var header: [String: Any] = [:]
        if !file.metadata.isEmpty { header["__metadata__"] = file.metadata }
        var offset = 0
        let names = file.tensors.keys.sorted()
        for name in names {
            let t = file.tensors[name]!
            header[name] = ["dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.data.count]] as [String: Any]
            offset += t.data.count
        }
        var json = try! JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        // Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
        while (8 + json.count) % 8 != 0 { json.append(0x20) }
        var out = Data(capacity: 8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(json)
        for name in names { out.append(file.tensors[name]!.data) }
        return out
    }

    /// Parses and validates every field; `source` names the file in errors.
    public static func decode(_ bytes: Data, source: String) throws -> File {
        func fail(_ why: String) -> SafetensorsError { .corrupt(file: source, reason: why) }
        guard bytes.count >= 8 else { throw fail("\(bytes.count) bytes is shorter than the 8-byte header length") }
        let n = bytes.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        guard n <= UInt64(bytes.count - 8) else { throw fail("header length \(n) runs past the end of the file (\(bytes.count) bytes)") }
        // A JSON header costs about 50 times its size once parsed: bound it (a language model's
        // vocabulary of 10,000 words is about 100 KB).
        guard n <= UInt64(maxHeaderBytes) else { throw fail("header length \(n) is above the \(maxHeaderBytes) bytes this reader accepts") }
        let headerData = bytes.subdata(in: bytes.startIndex + 8..<bytes.startIndex + 8 + Int(n))
        guard let header = (try? JSONSerialization.jsonObject(with: headerData)) as? [String: Any] else {
            throw fail("the header is not a JSON object")
        }
        let dataStart = 8 + Int(n), dataCount = bytes.count - dataStart
        guard header.count <= maxTensors + 1 else { throw fail("\(header.count) tensors; this reader accepts at most \(maxTensors)") }
        var file = File()
        var covered: [(Int, Int)] = []
        for (name, value) in header {
            if name == "__metadata__" {
                guard let m = value as? [String: String] else { throw fail("__metadata__ is not a map of strings") }
                file.metadata = m
                continue
            }
            guard let entry = value as? [String: Any], let dtype = entry["dtype"] as? String,
                let shape = entry["shape"] as? [Int], let offsets = entry["data_offsets"] as? [Int], offsets.count == 2
            else {
                throw fail("tensor \(name): needs dtype, shape and data_offsets [begin, end]")
            }
            guard let size = elementSizes[dtype] else { throw fail("tensor \(name): unknown dtype \(dtype)") }
            guard shape.allSatisfy({ $0 >= 0 }) else { throw fail("tensor \(name): negative dimension in \(shape)") }
            let (begin, end) = (offsets[0], offsets[1])
            guard begin >= 0, begin <= end, end <= dataCount else {
                throw fail("tensor \(name): data_offsets [\(begin), \(end)] outside the \(dataCount) data bytes (truncated?)")
            }
            // shape products from the file are checked for overflow, never trusted
            let elements = shape.reduce(Optional(1)) { p, d in
                p.flatMap {
                    let (m, o) = $0.multipliedReportingOverflow(by: d); return o ? nil : m
                }
            }
            guard let elements, !elements.multipliedReportingOverflow(by: size).overflow, end - begin == elements * size else {
                throw fail("tensor \(name): \(end - begin) bytes do not hold shape \(shape) of \(dtype)")
            }
            if end > begin { covered.append((begin, end)) }  // empty tensors take no bytes
            let start = bytes.startIndex + dataStart
            file.tensors[name] = Tensor(dtype: dtype, shape: shape, data: bytes.subdata(in: start + begin..<start + end))
        }
        // The format requires the data to be covered exactly, without holes or overlaps.
        var expected = 0
        for (b, e) in covered.sorted(by: { $0.0 < $1.0 }) {
            guard b == expected else { throw fail("tensor data has a hole or an overlap at byte \(b)") }
            expected = e
        }
        guard expected == dataCount else { throw fail("\(dataCount - expected) bytes after the last tensor") }
        return file
    }

    public static func read(_ url: URL) throws -> File {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder) else {
            throw SafetensorsError.missing(file: url.path)
        }
        if isFolder.boolValue {
            throw SafetensorsError.corrupt(
                file: url.path,
                reason: "is a folder; give the checkpoint file (e.g. \(url.appendingPathComponent("checkpoint.safetensors").path))")
        }
        let bytes: Data
        do { bytes = try Data(contentsOf: url) } catch {
            throw SafetensorsError.corrupt(
                file: url.path, reason: "cannot read it: \((error as NSError).localizedFailureReason ?? error.localizedDescription)")
        }
        return try decode(bytes, source: url.path)
    }

    /// Writes atomically: a temporary file beside the target, fsync, rename, fsync of the folder. A crash
    /// or a full disk leaves the previous file intact.
    public static func write(_ file: File, to url: URL) throws {
        try AtomicFile.write(encode(file), to: url)
    }
}

public enum SafetensorsError: Error, CustomStringConvertible, Equatable {
    case missing(file: String)
    case corrupt(file: String, reason: String)
    case unexpectedDType(expected: String, found: String)
    public var description: String {
        switch self {
        case .missing(let f): return "\(f): no such checkpoint file"
        case .corrupt(let f, let r): return "\(f): not a valid safetensors file: \(r)"
        case .unexpectedDType(let e, let f): return "expected a tensor of dtype \(e), found \(f)"
        }
    }
}

/// Replace-a-file-or-leave-it-alone writes.
public enum AtomicFile {
    /// Writes `data` to a temporary file beside `url`, fsyncs it, renames it into place and fsyncs the
    /// folder: `url` holds the old bytes or the new ones, never a torn file. A full disk's error says how
    /// much the file needed and how much was free once the temporary file was gone.
    public static func write(_ data: Data, to url: URL) throws {
        do { try replace(url, with: data) } catch var error as AtomicFileError where error.isOutOfSpace {
            var fs = statvfs()
            if statvfs(url.deletingLastPathComponent().path, &fs) == 0 {
                error.available = Int(clamping: UInt64(fs.f_bavail).multipliedReportingOverflow(by: UInt64(fs.f_frsize)).partialValue)
            }
            throw error
        }
    }

    private static func replace(_ url: URL, with data: Data) throws {
        let dir = url.deletingLastPathComponent()
        let tmp = dir.appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
        func check(_ ok: Bool, _ what: String) throws {
            if !ok { throw AtomicFileError(path: url.path, operation: what, errno: errno, needed: data.count) }
        }
        let fd = open(tmp.path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        try check(fd >= 0, "create \(tmp.lastPathComponent)")
        var ok = false
        defer { if !ok { unlink(tmp.path) } }
        do {
            defer { close(fd) }
            let write = KillPoint.nextWrite()
            try data.withUnsafeBytes { raw in
                var done = 0
                while done < raw.count {
                    let n = Foundation.write(fd, raw.baseAddress! + done, min(raw.count - done, max(raw.count / 2, 1)))
                    if n < 0 && errno == EINTR { continue }
                    try check(n > 0, "write")
                    done += n
                    if done < raw.count { KillPoint.reached(.midWrite, write: write) }
                }
            }
            SlowWrite.wait()
            try check(fsync(fd) == 0, "fsync")
            KillPoint.reached(.beforeRename, write: write)
            try check(rename(tmp.path, url.path) == 0, "rename into place")
            KillPoint.reached(.beforeFolderSync, write: write)
        }
        ok = true
        let dfd = open(dir.path, O_RDONLY)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }
}

/// For tests of what a busy disk does to a process: `TETHER_TEST_SLOW_WRITE=SECONDS` makes each atomic
/// write wait that long before its fsync.
enum SlowWrite {
    static let variable = "TETHER_TEST_SLOW_WRITE"
    private static let seconds = ProcessInfo.processInfo.environment[variable].flatMap(Double.init).map { min(max($0, 0), 60) }
    static func wait() { if let seconds { Thread.sleep(forTimeInterval: seconds) } }
}

/// For tests of what a kill leaves: `TETHER_TEST_KILL_DURING_WRITE=PHASE:N` makes this process SIGKILL
/// itself at that phase (mid-write, before-rename, before-folder-sync) of its Nth atomic write.
enum KillPoint: String {
    case midWrite = "mid-write", beforeRename = "before-rename", beforeFolderSync = "before-folder-sync"
    static let variable = "TETHER_TEST_KILL_DURING_WRITE"
    nonisolated(unsafe) private static var writes = 0
    private static let target: (KillPoint, Int)? = {
        guard let given = ProcessInfo.processInfo.environment[variable] else { return nil }
        let parts = given.split(separator: ":")
        guard parts.count == 2, let phase = KillPoint(rawValue: String(parts[0])), let n = Int(parts[1]) else { return nil }
        return (phase, n)
    }()
    /// Counts an atomic write (writes are made one at a time, by one thread); returns its number.
    static func nextWrite() -> Int {
        guard target != nil else { return 0 }
        writes += 1
        return writes
    }
    static func reached(_ phase: KillPoint, write: Int) {
        if let (p, n) = target, p == phase, n == write { kill(getpid(), SIGKILL) }
    }
}

public struct AtomicFileError: Error, CustomStringConvertible {
    public let path: String, operation: String, errno: Int32
    /// The file's size, and the bytes its file system had free for this user when the write failed.
    public var needed = 0, available: Int?
    public init(path: String, operation: String, errno: Int32, needed: Int = 0, available: Int? = nil) {
        (self.path, self.operation, self.errno, self.needed, self.available) = (path, operation, errno, needed, available)
    }
    /// The disk (or the user's quota) is full: the write may succeed once space is freed.
    public var isOutOfSpace: Bool { errno == ENOSPC || errno == EDQUOT }
    public var description: String { "\(path): \(reason)" }
    /// What failed, without the path.
    public var reason: String {
        let space =
            isOutOfSpace
            ? " (the file needs \(Self.megabytes(needed)); \(available.map(Self.megabytes) ?? "an unknown amount") free there)" : ""
        return "could not \(operation): \(String(cString: strerror(errno)))\(space)"
    }
    static func megabytes(_ bytes: Int) -> String { String(format: "%.1f MB", Double(bytes) / 1e6) }
}
