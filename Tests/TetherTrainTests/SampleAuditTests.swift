import Foundation
import Testing

@testable import TetherTrain

/// The audit's reading of a run's log lines: the chain of formings from the last back through their
/// parents, each counting the steps from its start to its child's, so what a dropped worker finished
/// alone, what a forming that restarted from an older checkpoint redid, or what a ring trained while
/// its coordinator was being replaced, is counted once.
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
                "start a 0 100 -", "step a 1 0 0,1", "step a 2 0 4,5", "step a 3 0 8", "start b 2 500 a", "step b 3 0 8,9",
                "step b 4 0 2,3"
            ],
            "samples-9.log": ["start a 0 101 -", "step a 1 0 2,3", "step a 2 0 6,7", "step a 3 0 9", "step a 4 1 6"]
        ])
        defer { try? FileManager.default.removeItem(at: dir) }
        let steps = try SampleAudit.steps(in: dir, through: 4)
        #expect(steps.mapValues(\.samples) == [1: [0, 1, 2, 3], 2: [4, 5, 6, 7], 3: [8, 9], 4: [2, 3]])
        #expect(steps[4]?.epoch == 0)
    }

    @Test func aFormingFromAnOlderCheckpointRedoesTheStepsAfterIt() throws {
        let dir = try folder([
            "samples-1.log": ["start a 0 10 -", "step a 1 0 1", "step a 2 0 2", "step a 3 0 3"],
            "samples-2.log": ["start b 1 20 a", "step b 2 0 20", "step b 3 0 30"]
        ])
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(try SampleAudit.steps(in: dir, through: 3).mapValues(\.samples) == [1: [1], 2: [20], 3: [30]])
        // a step the last forming never logged is missing, not taken from an earlier one
        #expect(try SampleAudit.steps(in: dir, through: 4)[4] == nil)
    }

    /// The chaos harness's overlap: ring a trains on past its coordinator's loss (to step 9); a restarted
    /// coordinator's ring b starts from a's checkpoint of step 5 and trains 6-7 meanwhile; the next
    /// coordinator's ring c takes what a's workers kept (step 8) and ends the run. b is outside the
    /// chain c <- a: its steps count for nothing, a's 6-8 count, c's 9-10 (not a's 9).
    @Test func aRingOutsideTheLineageCountsNothing() throws {
        let dir = try folder([
            "samples-1.log": (1...9).map { "step a \($0) 0 \($0)" } + ["start c 8 300 a", "step c 9 0 90", "step c 10 0 100"],
            "samples-2.log": ["start a 0 100 -", "start b 5 200 a", "step b 6 0 60", "step b 7 0 70"],
            "samples-3.log": ["checkpoint a 5", "checkpoint c 10"]
        ])
        defer { try? FileManager.default.removeItem(at: dir) }
        let steps = try SampleAudit.steps(in: dir, through: 10)
        #expect(steps.mapValues(\.samples) == [1: [1], 2: [2], 3: [3], 4: [4], 5: [5], 6: [6], 7: [7], 8: [8], 9: [90], 10: [100]])
        // a final checkpoint names the last forming even when another that began later logged the step
        let zombie = try folder([
            "samples-1.log": ["start a 0 1 -", "step a 1 0 1", "step a 2 0 2", "start z 1 9 a", "step z 2 0 20"],
            "samples-2.log": ["checkpoint a 2"]
        ])
        defer { try? FileManager.default.removeItem(at: zombie) }
        #expect(try SampleAudit.steps(in: zombie, through: 2).mapValues(\.samples) == [1: [1], 2: [2]])
    }

    @Test func membersThatDisagreeOnAStartOrABadLineAreErrors() throws {
        let split = try folder(["samples-1.log": ["start a 0 1 -"], "samples-2.log": ["start a 1 2 -"]])
        defer { try? FileManager.default.removeItem(at: split) }
        #expect(throws: (any Error).self) { try SampleAudit.steps(in: split, through: 1) }
        let parents = try folder(["samples-1.log": ["start a 0 1 -"], "samples-2.log": ["start a 0 2 b"]])
        defer { try? FileManager.default.removeItem(at: parents) }
        #expect(throws: (any Error).self) { try SampleAudit.steps(in: parents, through: 1) }
        let cycle = try folder(["samples-1.log": ["start a 1 1 b", "start b 1 2 a", "step a 2 0 2"]])
        defer { try? FileManager.default.removeItem(at: cycle) }
        #expect(throws: (any Error).self) { try SampleAudit.steps(in: cycle, through: 2) }
        let garbled = try folder(["samples-1.log": ["start a 0 1 -", "step a one 0 1"]])
        defer { try? FileManager.default.removeItem(at: garbled) }
        #expect(throws: (any Error).self) { try SampleAudit.steps(in: garbled, through: 1) }
    }
}
