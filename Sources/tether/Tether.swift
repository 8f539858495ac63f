import ArgumentParser
import Foundation
import TetherComm
import TetherTensor
import TetherTrain

@main
struct Tether: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Data-parallel training of weight-normalized, tied-weight and Wide & Deep networks.",
        discussion: "Data: \(DataSource.help). Run directories hold metrics.jsonl and checkpoint.safetensors.",
        version: TetherVersion.string,
        subcommands: [Train.self, Simulate.self, CoordinatorCommand.self, WorkerCommand.self, Eval.self, Bench.self, Keygen.self, Version.self]
    )

    /// Parses the command line after adding the job file's and the environment's settings (JobSettings).
    static func main() {
        let arguments: [String]
        do { arguments = try JobSettings.expand(Array(CommandLine.arguments.dropFirst()), environment: ProcessInfo.processInfo.environment) } catch {
            exit(withError: error)
        }
        main(arguments)
    }
}

enum TetherVersion { static let string = "0.1.0" }

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the versions of Tether and the C libraries it runs on.")
    func run() {
        print("tether \(TetherVersion.string)")
        print("libzmq \(ZeroMQ.version)")
        print("protobuf-c \(WireFormat.libraryVersion)")
        print("OpenBLAS \(BLAS.configuration)")
    }
}

/// Ends the process with a one-line error (no stack trace) for errors a user can act on.
func exitWithError(_ error: Error) -> Never {
    FileHandle.standardError.write(Data("tether: error: \(error)\n".utf8))
    Foundation.exit(1)
}
