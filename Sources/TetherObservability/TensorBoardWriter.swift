import Foundation
import TetherTrain
import TetherWire

/// Writes a run's scalars as a TensorBoard event file (--tensorboard DIR): the series Prometheus
/// serves, by global step. The file is TFRecord framing around `tensorboard.Event` messages
/// (protobuf-c): per record the length (u64 little-endian), its masked CRC-32C, the message, and the
/// message's masked CRC-32C. TensorBoard reads every events.out.tfevents.* file in the folder, so a
/// resumed run (a new file) continues the same curves.
public final class TensorBoardWriter: MetricsSink {
    public let path: String
    private let handle: FileHandle

    public init(directory: String) throws {
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw ConfigError(
                message: "--tensorboard \(directory): cannot create the folder (\((error as NSError).localizedFailureReason ?? "\(error)"))"
            )
        }
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
        let now = Date().timeIntervalSince1970
        path = directory + "/events.out.tfevents.\(Int(now)).\(host).\(getpid()).tether"
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw ConfigError(message: "--tensorboard \(path): cannot create the event file")
        }
        handle = h
        try append(Self.event(wallTime: now, step: 0, fileVersion: "brain.Event:2"))
    }

    deinit { try? handle.close() }

    /// The scalars of a metrics event, by tag (the same names as metrics.jsonl's fields).
    static func scalars(of e: MetricsEvent) -> [(tag: String, value: Double)] {
        var out: [(String, Double)] = []
        func add(_ tag: String, _ v: Double?) { if let v, v.isFinite { out.append((tag, v)) } }
        switch e.event {
        case "step":
            add("train/loss", e.loss); add("train/samples_per_sec", e.samples_per_sec); add("train/lr", e.lr)
            for (name, values) in [
                ("compute_s", e.compute_s), ("allreduce_s", e.allreduce_s), ("wait_s", e.wait_s),
                ("dense_bytes", e.dense_bytes), ("sparse_bytes", e.sparse_bytes)
            ] {
                for (rank, v) in (values ?? []).enumerated() { add("rank\(rank)/\(name)", v) }
            }
        case "epoch", "eval":
            add("epoch/loss", e.loss); add("epoch/samples_per_sec", e.samples_per_sec)
            add("test/loss", e.test_loss); add("test/accuracy", e.test_accuracy); add("test/perplexity", e.test_perplexity);
            add("test/auc", e.test_auc); add("test/rmse", e.test_rmse); add("test/mae", e.test_mae)
        case "lost", "joined", "reformed":
            add("cluster/workers", e.workers.map(Double.init))
        default: break
        }
        return out
    }

    public func record(_ e: MetricsEvent) throws {
        let scalars = Self.scalars(of: e)
        guard !scalars.isEmpty else { return }
        try append(Self.event(wallTime: Date().timeIntervalSince1970, step: e.step, scalars: scalars))
    }

    /// One Event message, protobuf-c encoded: a file version, or a summary of scalars.
    static func event(wallTime: Double, step: Int, fileVersion: String? = nil, scalars: [(tag: String, value: Double)] = []) -> [UInt8] {
        var event = Tensorboard__Event()
        tensorboard__event__init(&event)
        (event.wall_time, event.step) = (wallTime, Int64(step))
        var strings: [UnsafeMutablePointer<CChar>] = []
        defer { strings.forEach { free($0) } }
        func c(_ s: String) -> UnsafeMutablePointer<CChar> { let p = strdup(s)!; strings.append(p); return p }
        var values: [Tensorboard__Summary__Value] = scalars.map { s in
            var v = Tensorboard__Summary__Value()
            tensorboard__summary__value__init(&v)
            v.tag = c(s.tag)
            (v.value_case, v.simple_value) = (TENSORBOARD__SUMMARY__VALUE__VALUE_SIMPLE_VALUE, Float(s.value))
            return v
        }
        var summary = Tensorboard__Summary()
        tensorboard__summary__init(&summary)
        return values.withUnsafeMutableBufferPointer { valueStructs in
            var pointers: [UnsafeMutablePointer<Tensorboard__Summary__Value>?] = (0..<valueStructs.count).map {
                valueStructs.baseAddress! + $0
            }
            return pointers.withUnsafeMutableBufferPointer { p in
                (summary.n_value, summary.value) = (p.count, p.baseAddress)
                return withUnsafeMutablePointer(to: &summary) { summaryPointer in
                    if let fileVersion {
                        (event.what_case, event.file_version) = (TENSORBOARD__EVENT__WHAT_FILE_VERSION, c(fileVersion))
                    } else {
                        (event.what_case, event.summary) = (TENSORBOARD__EVENT__WHAT_SUMMARY, summaryPointer)
                    }
                    let size = tensorboard__event__get_packed_size(&event)
                    return [UInt8](unsafeUninitializedCapacity: size) { buf, count in
                        count = tensorboard__event__pack(&event, buf.baseAddress)
                    }
                }
            }
        }
    }

    /// Appends one record (TFRecord framing).
    private func append(_ message: [UInt8]) throws {
        var record = [UInt8]()
        record.reserveCapacity(message.count + 16)
        let length = withUnsafeBytes(of: UInt64(message.count).littleEndian, Array.init)
        record += length
        record += withUnsafeBytes(of: CRC32C.masked(length).littleEndian, Array.init)
        record += message
        record += withUnsafeBytes(of: CRC32C.masked(message).littleEndian, Array.init)
        do { try handle.write(contentsOf: record) } catch {
            throw ConfigError(message: "--tensorboard \(path): cannot write: \(error.localizedDescription)")
        }
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord frames use it, and the masked
/// form they store ("a CRC of data containing CRCs is weak", so it is rotated and offset).
enum CRC32C {
    static let table: [UInt32] = (0..<256).map { i in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes { crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }

    static func masked(_ bytes: [UInt8]) -> UInt32 {
        let crc = checksum(bytes)
        return ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }
}
