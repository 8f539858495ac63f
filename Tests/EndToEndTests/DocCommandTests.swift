import Foundation
import Testing

/// The commands in README.md and docs/ run as written, so none goes stale (as rustdoc runs the code in
/// documentation and Python's doctest its examples). A fenced block opened with "```sh runnable" is run
/// whole by bash (`set -euo pipefail`) in a fresh folder, with `tether` on the PATH; a "```sh
/// needs-torch" block likewise, with the tests' venv (PyTorch, ONNX Runtime) first on the PATH and
/// examples/ read from the repository; "```sh
/// needs-docker" and "```sh needs-slurm" blocks are the engine tests' (ComposeTests, SlurmTests); a
/// plain "```sh" block shows commands that need your files or hosts. To keep the runs short the
/// environment sets TETHER_MAX_STEPS, TETHER_TRAIN_LIMIT and TETHER_TEST_LIMIT (a command's own
/// --max-steps wins); the cluster recipe's HOST, THIS_HOST and port 7070 become loopback and a free port.
struct DocBlock: CustomTestStringConvertible, Sendable {
    let file: String, line: Int, kind: String, text: String
    var testDescription: String { "\(file):\(line)" }

    /// Every sh block of README.md and docs/*.md but ARCHITECTURE.md.
    static let all: [DocBlock] = {
        let docs = CLI.repository.appendingPathComponent("docs")
        let files =
            ["README.md"]
            + ((try? FileManager.default.contentsOfDirectory(atPath: docs.path)) ?? []).filter {
                $0.hasSuffix(".md") && $0 != "ARCHITECTURE.md"
            }
            .sorted().map { "docs/" + $0 }
        var blocks: [DocBlock] = []
        for file in files {
            let lines = ((try? String(contentsOf: CLI.repository.appendingPathComponent(file), encoding: .utf8)) ?? "")
                .components(separatedBy: "\n")
            var i = 0
            while i < lines.count {
                let opening = lines[i].trimmingCharacters(in: .whitespaces)
                guard opening.hasPrefix("```sh") else {
                    i += 1
                    continue
                }
                let kind = opening.dropFirst(5).trimmingCharacters(in: .whitespaces)
                var body: [String] = []
                var j = i + 1
                while j < lines.count, !lines[j].trimmingCharacters(in: .whitespaces).hasPrefix("```") {
                    body.append(lines[j])
                    j += 1
                }
                blocks.append(DocBlock(file: file, line: i + 1, kind: kind, text: body.joined(separator: "\n")))
                i = j + 1
            }
        }
        return blocks
    }()
}

@Suite(.serialized) struct DocCommandTests {
    static var runnable: [DocBlock] { DocBlock.all.filter { $0.kind == "runnable" || $0.kind == "needs-torch" } }
    /// The tests' venv, when it has what a needs-torch block runs.
    static let venv: URL? = {
        let bin = CLI.repository.appendingPathComponent(".build/test-venv/bin")
        let check = try? CLI.run(
            ["-c", "import torch, onnx, onnxruntime, safetensors"], executable: bin.appendingPathComponent("python3"))
        return check?.status == 0 ? bin : nil
    }()

    /// The marks a block may carry: a typo would quietly take a block out of the run.
    @Test func everyBlockIsMarkedKnowingly() {
        #expect(Self.runnable.count >= 4, "\(DocBlock.all.map(\.testDescription))")
        for block in DocBlock.all {
            #expect(
                ["", "runnable", "needs-torch", "needs-docker", "needs-slurm"].contains(block.kind),
                "\(block.testDescription): \(block.kind)")
        }
    }

    @Test(.enabled(if: dataInstalled, "needs Debian's dataset-fashion-mnist and fortunes"), arguments: DocCommandTests.runnable)
    func theBlockRuns(_ block: DocBlock) throws {
        if block.kind == "needs-torch" && Self.venv == nil {
            print(
                "skipped: \(block.testDescription) (no torch, onnx, onnxruntime and safetensors in .build/test-venv; scripts/install-deps --test)"
            )
            return
        }
        let dir = CLI.tempDir("doc")
        let bin = dir.appendingPathComponent("bin")
        try FileManager.default.createDirectory(at: bin, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.createSymbolicLink(at: bin.appendingPathComponent("tether"), withDestinationURL: CLI.binary)
        let port = String(CLI.freePorts(1)[0])
        let script =
            "set -euo pipefail\n"
            + block.text.replacingOccurrences(of: "tcp://0.0.0.0:7070", with: "tcp://127.0.0.1:\(port)")
            .replacingOccurrences(of: "tcp://HOST:7070", with: "tcp://127.0.0.1:\(port)")
            .replacingOccurrences(of: "THIS_HOST", with: "127.0.0.1")
            .replacingOccurrences(of: " examples/", with: " \(CLI.repository.path)/examples/")
        let path = dir.appendingPathComponent("block.sh")
        try script.write(to: path, atomically: true, encoding: .utf8)
        let environment = [
            "PATH":
                ([bin.path] + (block.kind == "needs-torch" ? [Self.venv!.path] : []) + [
                    ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
                ]).joined(separator: ":"), "TETHER_MAX_STEPS": "3",
            "TETHER_TRAIN_LIMIT": "4096", "TETHER_TEST_LIMIT": "256"
        ]
        let r = try CLI.run([path.path], timeout: 600, environment: environment, executable: URL(fileURLWithPath: "/bin/bash"), in: dir)
        #expect(r.status == 0, "\(block.testDescription) failed:\n\(script)\n\(r.stdout.suffix(2000))\n\(r.stderr.suffix(2000))")
    }
}
