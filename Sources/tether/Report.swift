import ArgumentParser
import Foundation
import TetherObservability
import TetherTrain

/// `tether report`: a run (or several, overlaid) as one self-contained HTML page.
struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write an HTML page of one or more runs: loss, held-out metric, throughput, per-rank time, stragglers, bytes, events.",
        discussion:
            "The page is one file with inline SVG (nothing is fetched from the network): open it in any browser. Several run directories overlay their curves, one colour per run."
    )

    @Argument(help: "Run directories (each holds metrics.jsonl).") var runDirectories: [String]
    @Option(help: "The HTML file to write (default: report.html in the first run directory).") var output: String?

    func run() throws {
        do {
            let runs = try runDirectories.map { try RunReport.load(URL(fileURLWithPath: $0)) }
            let file = output ?? URL(fileURLWithPath: runDirectories[0]).appendingPathComponent("report.html").path
            do { try Data(RunReport.html(runs).utf8).write(to: URL(fileURLWithPath: file)) } catch {
                throw ConfigError(message: "\(file): cannot write the report: \((error as NSError).localizedFailureReason ?? "\(error)")")
            }
            print("report: \(file)")
        } catch {
            exitWithError(error)
        }
    }
}
