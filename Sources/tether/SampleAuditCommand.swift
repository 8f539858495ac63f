import ArgumentParser
import Foundation
import TetherTrain

/// `tether sample-audit DIR --through N --samples COUNT` (hidden; for cluster/chaos and tests): reads
/// the `TETHER_TEST_SAMPLE_LOG` folder of a run that stopped after global step N and checks that every
/// step 1...N counts once, and that every whole epoch (each before the last step's) used each of the
/// COUNT training samples exactly once. Prints the verdict; exits 1 when it does not hold.
struct SampleAuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sample-audit", abstract: "Check a run's sample audit log (a test hook).", shouldDisplay: false)

    @Argument(help: "The folder the run's processes logged to (TETHER_TEST_SAMPLE_LOG).") var directory: String
    @Option(help: "The run's final global step.") var through: Int
    @Option(help: "Training samples in an epoch.") var samples: Int

    func run() throws {
        do {
            let steps = try SampleAudit.steps(in: URL(fileURLWithPath: directory), through: through)
            var problems: [String] = []
            let missing = (1...max(through, 1)).filter { steps[$0] == nil }
            if through > 0, !missing.isEmpty {
                problems.append(
                    "\(missing.count) steps never counted (first: \(missing.prefix(5).map(String.init).joined(separator: ", ")))")
            }
            let lastEpoch = steps[through]?.epoch ?? 0
            var byEpoch: [Int: [Int]] = [:]
            for step in steps.values where step.epoch < lastEpoch { byEpoch[step.epoch, default: []] += step.samples }
            for epoch in byEpoch.keys.sorted() {
                let used = byEpoch[epoch]!, distinct = Set(used)
                if used.count != samples || distinct != Set(0..<samples) {
                    problems.append(
                        "epoch \(epoch): \(used.count) samples used, \(distinct.count) distinct of \(samples) (\(used.count - distinct.count) twice, \(samples - distinct.intersection(0..<samples).count) missing)"
                    )
                }
            }
            if problems.isEmpty {
                print("\(through) steps, each counted once; \(byEpoch.count) whole epochs, each sample used exactly once in each")
            } else {
                print(problems.joined(separator: "; "))
                throw ExitCode(1)
            }
        } catch let exit as ExitCode {
            throw exit
        } catch {
            exitWithError(error)
        }
    }
}
