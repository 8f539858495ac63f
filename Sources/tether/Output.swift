import ArgumentParser
import Foundation
import TetherCluster
import TetherJobFile
import TetherNN
import TetherONNX
import TetherTrain

/// What `train`, `simulate` and `coordinator` print: progress lines (or nothing, --quiet), one final
/// JSON object on stdout (--json, progress going to stderr), or the settings they would run with
/// (--print-config).
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print nothing but errors and warnings.") var quiet = false
    @Flag(help: "Print one JSON object on stdout when the run ends (the end event with the last evaluation); progress goes to stderr.")
    var json = false
    @Flag(
        help:
            "Print the settings this command would run with (after the job file, TETHER_ variables and flags; on --resume, the checkpoint's) as a job file for --config (as JSON with --json), and exit."
    )
    var printConfig = false

    var progress: ProgressDisplay { ProgressDisplay(toStandardError: json, quiet: quiet) }

    /// With --print-config: the settings as a job file (or, with --json, one JSON object), and true
    /// (the command then exits).
    func printedConfig(_ command: String, _ config: TrainingConfig, _ settings: [String: Any]) throws -> Bool {
        guard printConfig else { return false }
        guard json else {
            print(JobFileText.make(command: command, config: config, settings: settings), terminator: "")
            return true
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var object = settings
        object["command"] = command
        object["config"] = try JSONSerialization.jsonObject(with: encoder.encode(config))
        print(
            String(
                decoding: try JSONSerialization.data(
                    withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]), as: UTF8.self))
        return true
    }

    /// With --json: how a cluster job ended.
    func printSummary(_ coordinator: Coordinator) throws {
        guard let end = coordinator.endEvent else { return }
        try printSummary(end, lastEvaluation: coordinator.lastEvaluation, runDirectory: coordinator.runDirectory.path)
    }

    /// With --json: `end` (and the last evaluation's metrics, the run directory and checkpoint) as one object.
    func printSummary(_ end: MetricsEvent, lastEvaluation: MetricsEvent?, runDirectory: String) throws {
        guard json else { return }
        var summary = end
        if let e = lastEvaluation {
            (summary.test_accuracy, summary.test_loss, summary.test_perplexity, summary.test_auc) = (
                e.test_accuracy, e.test_loss, e.test_perplexity, e.test_auc
            )
            (summary.test_rmse, summary.test_mae) = (e.test_rmse, e.test_mae)
            summary.loss = e.loss
        }
        var object = try JSONSerialization.jsonObject(with: MetricsLog.encode(summary)) as! [String: Any]
        let folder = URL(fileURLWithPath: runDirectory).standardizedFileURL  // absolute, whichever command
        object["run_dir"] = folder.path
        object["checkpoint"] = folder.appendingPathComponent(Checkpoint.fileName).path
        print(
            String(
                decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self
            ))
    }
}

/// `tether models`: the model families, what each is, and the defaults a new run of it takes;
/// `tether models show FILE.yaml`: a spec's layers with their inferred shapes and parameters.
struct Models: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the model families, their defaults and their data.", subcommands: [List.self, Show.self],
        defaultSubcommand: List.self)

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a model spec's layers with the shape each gives and the parameters each holds.")
        @Argument(
            help:
                "The spec: a YAML file, the name of a shipped one (mlp, mlp-wn, cnn-wn, in models/), or an ONNX model (FILE.onnx) read as a spec."
        )
        var spec: String

        func run() throws {
            do {
                guard
                    let s = try ShippedSpecs.spec(spec)
                        ?? (spec.hasSuffix(".yaml") || spec.hasSuffix(".yml") ? ModelSpecFile.read(spec) : nil)
                        ?? (spec.hasSuffix(".onnx") ? ONNXImport.read(spec).spec : nil)
                else {
                    throw SpecError(
                        "\(spec): give a spec file (FILE.yaml) or a shipped spec: \(ShippedSpecs.text.keys.sorted().joined(separator: ", "))"
                    )
                }
                let shapes = try s.shapes()
                print("\(s.name): input \(try s.inputShape()), loss \(s.loss.rawValue)")
                let counts = try s.parameterCounts()
                for (i, (layer, after)) in zip(s.layers, shapes).enumerated() {
                    let parameters = counts[i], line = ModelSpecFile.yaml(layer)
                    print(
                        "  layers.\(i)".padding(toLength: 12, withPad: " ", startingAt: 0)
                            + line + String(repeating: " ", count: max(1, 64 - line.count))  // a long one (a concat) whole
                            + " -> \(after)" + (parameters > 0 ? ", \(parameters.formatted()) parameters" : ""))
                }
                if let w = s.wide {
                    print(
                        "  wide".padding(toLength: 12, withPad: " ", startingAt: 0)
                            + "{buckets: \(w.buckets), crosses: \(w.crosses), ftrl: \(w.ftrl)}".padding(
                                toLength: 64, withPad: " ", startingAt: 0)
                            + " -> (1), added to layers.\(s.layers.count - 1)'s, \(w.buckets.formatted()) parameters")
                }
                print(
                    "\((try s.parameterCount()).formatted()) parameters; "
                        + (s.loss.isRegression ? ProgressDisplay.count(try s.classes(), "target") : "\(try s.classes()) classes"))
            } catch { exitWithError(error) }
        }

    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List the model families (the default).")

        @Flag(help: "Print one JSON object.") var json = false

        func run() throws {
            let rows = ModelFamily.all.map { family -> [String: Any] in
                let c = TrainingConfig.defaults(for: family.name)
                return [
                    "model": family.name, "description": family.summary, "data": c.data, "batch": c.batch, "epochs": c.epochs,
                    "optimizer": c.optimizer.kind.rawValue, "lr": c.schedule.baseLR, "schedule": c.schedule.kind.rawValue
                ]
            }
            if json {
                print(
                    String(
                        decoding: try JSONSerialization.data(
                            withJSONObject: ["models": rows], options: [.sortedKeys, .withoutEscapingSlashes]),
                        as: UTF8.self))
                return
            }
            for row in rows {
                print(
                    "\(row["model"]!)\n  \(row["description"]!)\n  data \(row["data"]!), batch \(row["batch"]!), epochs \(row["epochs"]!), "
                        + "\(row["optimizer"]!) lr \(row["lr"]!) (\(row["schedule"]!) schedule)")
            }
            print("\nData: \(DataSource.help). Any default can be changed by its flag (tether train --help).")
            print("\nShipped model specs (models/; --model NAME.yaml from there, or copy one to start yours):")
            for name in ShippedSpecs.text.keys.sorted() {
                let summary = ShippedSpecs.text[name]!.split(separator: "\n").first.map { $0.drop { $0 == "#" || $0 == " " } } ?? ""
                print(
                    "  \(name)  \(summary.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "")")
            }
            print("Your own network: --model FILE.yaml (a model spec; tether models show FILE.yaml prints its shapes).")
        }
    }
}

/// A command's settings as a job file (`--print-config`): kebab-case keys, the options that set them,
/// only what applies to the model (lm-tied's language settings, wide-deep's columns and FTRL), so that
/// fed back with `--config` it gives the same settings.
enum JobFileText {
    static func make(command: String, config c: TrainingConfig, settings: [String: Any]) -> String {
        var lines = ["# tether \(command) --print-config: run it again with tether \(command) --config FILE"]
        func put(_ key: String, _ value: Any?) {
            guard let value else { return }
            let text: String
            switch value {
            case let list as [Int]: text = "[" + list.map(String.init).joined(separator: ", ") + "]"
            case let s as String: text = quoted(s)
            default: text = "\(value)"
            }
            lines.append("\(key): \(text)")
        }
        if let spec = c.spec {
            lines.append("model:")
            lines.append(ModelSpecFile.yaml(spec, indent: 2).dropLast().description)
        } else {
            put("model", c.model)
        }
        put("data", c.data)
        put("test-data", c.testData)
        put("schema", c.schema)
        put("epochs", c.epochs)
        put("max-steps", c.maxSteps)
        put("batch", c.batch)
        put("seed", c.seed)
        put("train-limit", c.trainLimit)
        put("test-limit", c.testLimit)
        put("checkpoint-every", c.checkpointEvery)
        put("log-every", c.logEvery)
        put("optimizer", c.optimizer.kind.rawValue)
        put("lr", c.schedule.baseLR)
        if c.optimizer.kind == .sgd {
            put("momentum", c.optimizer.momentum)
            put("nesterov", c.optimizer.nesterov)
        }
        put("weight-decay", c.optimizer.weightDecay)
        put("clip-norm", c.optimizer.clipNorm)
        put("schedule", c.schedule.kind.rawValue)
        put("warmup-steps", c.schedule.warmupSteps)
        switch c.schedule.kind {
        case .step:
            put("lr-step-size", c.schedule.stepSize)
            put("lr-gamma", c.schedule.gamma)
        case .plateau: put("lr-gamma", c.schedule.gamma)
        case .cosine: put("min-lr", c.schedule.minLR)
        case .constant: break
        }
        if c.model == "lm-tied" {
            let l = c.language
            for (k, v) in [("vocabulary", l.vocabulary), ("size", l.size), ("layers", l.layers), ("bptt", l.bptt)] { put(k, v) }
            put("dropout", l.dropout)
            put("untied", l.untied)
            put("weight-norm", l.weightNorm)
        }
        if c.model == "wide-deep" {
            let w = c.wideDeep
            for (k, v) in [("buckets", w.buckets), ("wide-buckets", w.wideBuckets), ("embedding", w.embedding)] { put(k, v) }
            put("hidden", w.hidden)
            put("parts", w.parts.rawValue)
            put("ftrl-alpha", c.optimizer.ftrl.alpha)
            put("ftrl-l1", c.optimizer.ftrl.l1)
            put("ftrl-l2", c.optimizer.ftrl.l2)
        }
        if command != "train" {
            put("compression", c.compression?.rawValue)
            put("powersgd-rank", c.powerSGDRank)
            put("powersgd-start-step", c.powerSGDStartStep)
            if c.errorFeedback == false { put("error-feedback", false) }
        }
        for key in settings.keys.sorted() { put(key.replacingOccurrences(of: "_", with: "-"), settings[key]) }
        return lines.joined(separator: "\n") + "\n"
    }

    /// A string as YAML reads it back: plain when that is unambiguous, else double-quoted.
    static func quoted(_ s: String) -> String {
        let plain =
            !s.isEmpty && s.allSatisfy { $0.isLetter || $0.isNumber || "-_./:+@".contains($0) } && !s.hasPrefix("-")
            && Double(s) == nil && !["true", "false", "yes", "no", "on", "off", "null"].contains(s.lowercased())
        return plain ? s : "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
}
