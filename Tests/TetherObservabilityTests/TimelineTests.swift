import Foundation
import Testing
import TetherComm
@testable import TetherObservability

@Suite struct TimelineTests {
    /// Span names come from workers: whatever they hold, the trace stays JSON and names round-trip.
    @Test func theTraceIsJSONWhateverTheSpanNames() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("timeline-\(UUID()).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let names = ["forward and backward", "a \"quoted\" \\ name", "new\nline\t\u{1}", "ünïcödé ✓"]
        let timeline = try Timeline(path: path)
        try timeline.add(
            rank: 1, globalStep: 7,
            spans: names.enumerated().map { .init(name: $1, startMicroseconds: UInt64(10 + $0), durationMicroseconds: 5) })
        try timeline.mark("worker lost", step: 7)
        timeline.close()
        let trace = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any]
        let events = trace?["traceEvents"] as? [[String: Any]] ?? []
        let spans = events.filter { $0["ph"] as? String == "X" }
        #expect(spans.map { $0["name"] as? String } == names)
        #expect(spans.allSatisfy { $0["tid"] as? Int == 1 && $0["dur"] as? Int == 5 && ($0["args"] as? [String: Int])?["step"] == 7 })
        // tracks 0 and 1 named, and the instant
        #expect(events.filter { $0["name"] as? String == "thread_name" }.count == 2)
        #expect(events.contains { $0["ph"] as? String == "i" && $0["name"] as? String == "worker lost" })
    }
}
