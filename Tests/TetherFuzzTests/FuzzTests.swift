import Testing
import Foundation
import TetherComm
import TetherMessages
import TetherFuzz
import TetherTrain

/// Every fuzz target, briefly, with a fixed seed: its seeds (real messages and files) and 3,000 inputs
/// mutated from them. A trap fails the whole run (it is a crash); no input may take a second.
/// bench/fuzz runs the same targets under libFuzzer for millions of inputs.
@Suite struct FuzzTests {
    @Test(arguments: FuzzTarget.allCases)
    func aBriefFuzzRunFindsNoCrashAndNoSlowInput(target: FuzzTarget) {
        var driver = MutationDriver(target, seed: 2026)
        let report = driver.run(inputs: 3_000)
        #expect(report.inputs == target.seeds.count + 3_000)
        #expect(report.slowest < .seconds(1), "\(target): an input took \(report.slowest): \(report.slowestInput.prefix(64))")
    }

    /// The seeds are what the code writes, so they decode: a target whose seeds were all refused would
    /// fuzz nothing but the first check.
    @Test func theSeedsAreRealMessagesAndFiles() throws {
        for target in FuzzTarget.allCases { #expect(!target.seeds.isEmpty, "\(target)") }
        for seed in FuzzTarget.envelope.seeds { #expect(try Envelope(decoding: seed).body != nil) }
        // every family's defaults, then each numeric setting at 2^31, 2^62 and 2^63-1
        let configs = FuzzTarget.assign.seeds
        #expect(configs.count > 5 * 3 * 20)
        #expect(configs.filter { (try? JSONDecoder().decode(TrainingConfig.self, from: Data($0))) != nil }.count > 5 * 3 * 10)
        _ = try Checkpoint.Loaded(bytes: Data(FuzzTarget.safetensors.seeds[0]), source: "the checkpoint seed")
    }
}
