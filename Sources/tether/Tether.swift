import ArgumentParser
import Foundation
import TetherComm
import TetherMessages
import TetherTensor
import TetherTrain

@main
struct Tether: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Data-parallel training of weight-normalized, tied-weight and Wide & Deep networks.",
        discussion: "Data: \(DataSource.help). Run directories hold metrics.jsonl and checkpoint.safetensors.",
        version: TetherVersion.string,
        subcommands: [
            Train.self, Simulate.self, CoordinatorCommand.self, WorkerCommand.self, Eval.self, Predict.self, Export.self, Report.self,
            Models.self,
            Bench.self, Plan.self,
            Keygen.self, Version.self, SampleAuditCommand.self
        ]
    )

    /// Parses the command line after adding the job file's and the environment's settings (JobSettings).
    static func main() {
        ProcessStart.restartIfNeeded(environment: ProcessInfo.processInfo.environment)
        // The restart blocked SIGINT and SIGTERM across its exec: a command that stops gracefully takes
        // them from here (one that came meanwhile is delivered now); any other ends on them as usual.
        if let command = CommandLine.arguments.dropFirst().first, ["train", "simulate", "coordinator", "worker"].contains(command) {
            StopSignal.install()
        } else {
            StopSignal.unblock()
        }
        // A misspelt command is named as such, not as an unknown option of the top level.
        let names = commandNames
        if let first = CommandLine.arguments.dropFirst().first, !first.hasPrefix("-"), !names.contains(first), first != "help" {
            let near = names.filter { editDistance($0, first) <= 2 }
            FileHandle.standardError.write(
                Data(
                    ("tether: error: unknown command \"\(first)\""
                        + (near.isEmpty ? "" : " (did you mean \(near.joined(separator: " or "))?)")
                        + "; the commands are \(names.joined(separator: ", "))\n").utf8))
            Foundation.exit(64)
        }
        let arguments: [String]
        do {
            arguments = try JobSettings.expand(Array(CommandLine.arguments.dropFirst()), environment: ProcessInfo.processInfo.environment)
        } catch {
            exit(withError: error)
        }
        main(arguments)
    }
}

extension Tether {
    /// The subcommands' names, as the parser knows them.
    static var commandNames: [String] {
        var names: [String] = []
        for type in configuration.subcommands {
            let command: ParsableCommand.Type = type
            names.append(command._commandName)
        }
        return names
    }
}

/// Levenshtein distance (for "did you mean").
func editDistance(_ a: String, _ b: String) -> Int {
    let x = Array(a), y = Array(b)
    var row = Array(0...y.count)
    for i in 1...max(x.count, 1) where !x.isEmpty {
        var previous = row[0]
        row[0] = i
        for j in stride(from: 1, through: y.count, by: 1) {
            let kept = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (x[i - 1] == y[j - 1] ? 0 : 1))
            previous = kept
        }
    }
    return x.isEmpty ? y.count : row[y.count]
}

enum TetherVersion { static let string = "0.1.0" }

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the versions of Tether and the C libraries it runs on.")
    func run() {
        print("tether \(TetherVersion.string)")
        print("libzmq \(ZeroMQ.version)")
        print("protobuf-c \(WireFormat.libraryVersion)")
        let blas = BLAS.configuration
        print(blas.hasPrefix("OpenBLAS") ? blas : "OpenBLAS \(blas)")
        if let detected = ProcessInfo.processInfo.environment[BLASCore.detectedVariable] {
            print("OpenBLAS core \(BLASCore.name): set by tether (OpenBLAS took this CPU for \(detected); OPENBLAS_CORETYPE overrides)")
        } else if let set = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"],
            let better = BLASCore.replacement(chosen: BLASCore.name, vectorLevel: BLASCore.cpuVectorLevel, environment: [:])
        {
            print(
                "OpenBLAS core \(BLASCore.name): OPENBLAS_CORETYPE=\(set) in the environment, below what this CPU runs (\(better)'s kernels); unset it to let OpenBLAS and tether choose"
            )
        } else {
            print("OpenBLAS core \(BLASCore.name)")
        }
    }
}

/// Ends the process with a one-line error (no stack trace) for errors a user can act on.
func exitWithError(_ error: Error) -> Never {
    FileHandle.standardError.write(Data("tether: error: \(error)\n".utf8))
    Foundation.exit(1)
}
