import Foundation
import Testing

@testable import TetherTrain

/// The audit's reading of a run's log lines: each forming of the ring counts the steps from its start
/// to the next forming's, so what a dropped worker finished alone, or a forming that restarted from an
/// older checkpoint redid, is counted once.
struct SampleAuditTests {
    func folder(_ files: [String: [String]]) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tether-audit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for (name, lines) in files {
            try (lines.joined(separator: "\n") + "\n").write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        return dir
    }

    @Test func eachFormingCountsTheStepsUpToTheNextOnesStart() throws {
        // ring a (two workers) does steps 1-3; worker 9 is dropped during step 3 and, continued,
        // finishes steps 3 and 4 alone on ring a; ring b (worker 8 alone) starts at step 2 and does 3-4
        let dir = try folder([
            "samples-8.log": [
                "start a 0 100", "step a 1 0 0,1", "step a 2 0 4,5", "step a 3 0 8", "start b 2 500", "step b 3 0 8,9", "step b 4 0 2,3"
            ],
            "samples-9.log": ["start a 0 101", "step a 1 0 2,3", "step a 2 0 6,7", "step a 3 0 9", "step a 4 1 6"]
        ])
        defer { try? FileManager.default.removeItem(at: dir) }
        let steps = try SampleAudit.steps(in: dir, through: 4)
        #expect(steps.mapValues(\.samples) == [1: [0, 1, 2, 3], 2: [4, 5, 6, 7], 3: [8, 9], 4: [2, 3]])
        #expect(steps[4]?.epoch == 0)
    }

    @Test func aFormingFromAnOlderCheckpointRedoesTheStepsAfterIt() throws {
        let dir = try folder([
            "samples-1.log": ["start a 0 10", "step a 1 0 1", "step a 2 0 2", "step a 3 0 3"],
            "samples-2.log": ["start b 1 20", "step b 2 0 20", "step b 3 0 30"]
        ])
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(try SampleAudit.steps(in: dir, through: 3).mapValues(\.samples) == [1: [1], 2: [20], 3: [30]])
        // a step the last forming never logged is missing, not taken from an earlier one
        #expect(try SampleAudit.steps(in: dir, through: 4)[4] == nil)
    }

    @Test func membersThatDisagreeOnAStartOrABadLineAreErrors() throws {
        let split = try folder(["samples-1.log": ["start a 0 1"], "samples-2.log": ["start a 1 2"]])
        defer { try? FileManager.default.removeItem(at: split) }
        #expect(throws: (any Error).self) { try SampleAudit.steps(in: split, through: 1) }
        let garbled = try folder(["samples-1.log": ["start a 0 1", "step a one 0 1"]])
        defer { try? FileManager.default.removeItem(at: garbled) }
        #expect(throws: (any Error).self) { try SampleAudit.steps(in: garbled, through: 1) }
    }
}
