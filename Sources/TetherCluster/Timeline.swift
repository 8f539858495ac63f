import Foundation
import TetherComm
import TetherTrain

/// A job's Chrome trace (--timeline): the trace-event JSON format that Perfetto and chrome://tracing
/// open, one track per rank, written as steps complete (the ranks' spans come in their step reports),
/// with the job's events (a worker lost, a re-formation) as instants across every track. Times are
/// the workers' clocks, in microseconds since the Unix epoch; hosts' clocks may differ by their skew.
final class Timeline {
    let path: String
    private let handle: FileHandle
    private var ranksNamed = 0
    private var first = true

    init(path: String) throws {
        self.path = path
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw ConfigError(message: "--timeline \(path): cannot create the file (does its folder exist and is it writable?)")
        }
        handle = h
        try write("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n")
        try append(["name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": ["name": "tether job"]])
    }

    /// A completed step: each rank's spans on its track.
    func add(_ step: CoordinatorState.StepSummary) throws {
        for (rank, spans) in step.spans.enumerated() { try add(rank: rank, globalStep: step.globalStep, spans: spans) }
    }

    /// One rank's spans of step `globalStep` on its track (a worker's own --timeline: its rank only).
    func add(rank: Int, globalStep: Int, spans: [Envelope.TraceSpan]) throws {
        while ranksNamed <= rank {
            try append(["name": "thread_name", "ph": "M", "pid": 1, "tid": ranksNamed, "args": ["name": "rank \(ranksNamed)"]])
            try append(["name": "thread_sort_index", "ph": "M", "pid": 1, "tid": ranksNamed, "args": ["sort_index": ranksNamed]])
            ranksNamed += 1
        }
        for s in spans {
            try append([
                "name": s.name, "cat": Self.category(s.name), "ph": "X", "pid": 1, "tid": rank,
                "ts": s.startMicroseconds, "dur": s.durationMicroseconds, "args": ["step": globalStep]
            ])
        }
    }

    /// A job event (lost, reformed, checkpoint) at now, across every track.
    func mark(_ name: String, step: Int) throws {
        try append([
            "name": name, "ph": "i", "s": "g", "pid": 1, "tid": 0, "ts": UInt64(max(0, Date().timeIntervalSince1970 * 1e6)),
            "args": ["step": step]
        ])
    }

    /// Ends the JSON (a trace cut short by a crash still opens in Perfetto, which tolerates the missing end).
    func close() {
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

    private func write(_ text: String) throws {
        do { try handle.write(contentsOf: Data(text.utf8)) } catch {
            throw ConfigError(message: "--timeline \(path): cannot write: \(error.localizedDescription)")
        }
    }
}
