import Foundation
import TetherComm
import TetherMessages
import TetherTrain

/// A job's Chrome trace (--timeline): the trace-event JSON format that Perfetto and chrome://tracing
/// open, one track per rank, written as steps complete (the ranks' spans come in their step reports),
/// with the job's events (a worker lost, a re-formation) as instants across every track. Times are
/// the workers' clocks, in microseconds since the Unix epoch; hosts' clocks may differ by their skew.
public final class Timeline {
    let path: String
    private let handle: FileHandle
    private var ranksNamed = 0
    private var first = true

    public init(path: String) throws {
        self.path = path
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw ConfigError(message: "--timeline \(path): cannot create the file (does its folder exist and is it writable?)")
        }
        handle = h
        try write("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n")
        try append(["name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": ["name": "tether job"]])
    }

    /// A completed step: each rank's spans (by rank) on its track.
    public func add(globalStep: Int, spansByRank: [[TraceSpan]]) throws {
        for (rank, spans) in spansByRank.enumerated() { try add(rank: rank, globalStep: globalStep, spans: spans) }
    }

    /// One rank's spans of step `globalStep` on its track (a worker's own --timeline: its rank only).
    public func add(rank: Int, globalStep: Int, spans: [TraceSpan]) throws {
        while ranksNamed <= rank {
            try append(["name": "thread_name", "ph": "M", "pid": 1, "tid": ranksNamed, "args": ["name": "rank \(ranksNamed)"]])
            try append(["name": "thread_sort_index", "ph": "M", "pid": 1, "tid": ranksNamed, "args": ["sort_index": ranksNamed]])
            ranksNamed += 1
        }
        for s in spans { try appendSpan(s, rank: rank, globalStep: globalStep) }
    }

    /// The step's spans for the timeline: forward and backward, the exchange left after it, the optimizer, in order from `began`; and each collective as it ran.
    public static func stepSpans(
        began: UInt64, times: StepTimes, collectives: [(name: String, start: UInt64, end: UInt64)]
    ) -> [TraceSpan] {
        func us(_ seconds: Double) -> UInt64 { UInt64(max(0, seconds * 1e6)) }
        var spans: [TraceSpan] = []
        var at = began
        for (name, seconds) in [
            ("forward and backward", times.compute), ("exchange left after backward", times.exchange), ("optimizer", times.optimizer)
        ] {
            spans.append(
                TraceSpan(
                    name: String(name.prefix(TraceSpan.nameLimit)), startMicroseconds: at, durationMicroseconds: us(seconds)))
            at += us(seconds)
        }
        for c in collectives.prefix(TraceSpan.limit - spans.count) {
            spans.append(
                TraceSpan(
                    name: String(c.name.prefix(TraceSpan.nameLimit)), startMicroseconds: c.start,
                    durationMicroseconds: c.end >= c.start ? c.end - c.start : 0))
        }
        return spans
    }

    /// A job event (lost, reformed, checkpoint) at now, across every track.
    public func mark(_ name: String, step: Int) throws {
        try append([
            "name": name, "ph": "i", "s": "g", "pid": 1, "tid": 0, "ts": UInt64(max(0, Date().timeIntervalSince1970 * 1e6)),
            "args": ["step": step]
        ])
    }

    /// Ends the JSON (a trace cut short by a crash still opens in Perfetto, which tolerates the missing end).
    public func close() {
        try? write("\n]}\n")
        try? handle.close()
    }

    static func category(_ name: String) -> String {
        name.hasPrefix("all-reduce") || name.hasPrefix("sparse") ? "collective" : name.hasPrefix("exchange") ? "exchange" : "compute"
    }

    private func append(_ event: [String: Any]) throws {
        let json = try JSONSerialization.data(withJSONObject: event, options: [.sortedKeys])
        try write((first ? "" : ",\n") + String(decoding: json, as: UTF8.self))
        first = false
    }

    /// A span, formatted by hand: a step brings a few per rank, and JSONSerialization for each cost a
    /// measurable share of a 2-core machine.
    private func appendSpan(_ s: TraceSpan, rank: Int, globalStep: Int) throws {
        try write(
            (first ? "" : ",\n")
                + "{\"args\":{\"step\":\(globalStep)},\"cat\":\"\(Self.category(s.name))\",\"dur\":\(s.durationMicroseconds),"
                + "\"name\":\(Self.quoted(s.name)),\"ph\":\"X\",\"pid\":1,\"tid\":\(rank),\"ts\":\(s.startMicroseconds)}", flush: false)
        first = false
    }

    /// A JSON string (span names come from workers: escape what JSON requires).
    static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }

    /// Written in blocks (a span is a few dozen bytes; a write each would be a system call each):
    /// at 64 KiB, at every job event and at the end.
    private var pending = Data()
    private func write(_ text: String, flush: Bool = true) throws {
        pending.append(contentsOf: text.utf8)
        guard flush || pending.count >= 1 << 16 else { return }
        do { try handle.write(contentsOf: pending) } catch {
            throw ConfigError(message: "--timeline \(path): cannot write: \(error.localizedDescription)")
        }
        pending.removeAll(keepingCapacity: true)
    }
}
