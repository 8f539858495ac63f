import ArgumentParser
import Foundation
import TetherJobFile
import TetherTensor
import TetherTrain

/// Settings from a job file and the environment, turned into command-line arguments placed ahead of
/// the command line's own (the parser keeps the last value of an option). Precedence, highest first:
/// the command line, `TETHER_*` environment variables, the job file, the command's defaults.
///
/// - A job file (`--config FILE`, or `TETHER_CONFIG=FILE`) is YAML: option names as on the command line
///   without the dashes (`train-limit` or `train_limit`) mapped to values. `true` turns a flag on,
///   `false` turns an invertible one off (`weight-norm: false`), a list is joined with commas
///   (`hidden: [256, 128, 64]`). Keys may be grouped under a command's name (`coordinator:`,
///   `simulate:`, ...): a group for another command is skipped, so one file can serve several.
/// - `TETHER_LR=0.01` is `--lr 0.01`; `TETHER_RESUME=true` is `--resume`; an empty variable is unset.
/// - A key or variable that names an option of another command is ignored by a command that lacks it
///   (one job file, one environment, serves the coordinator and the workers). A job file key that names
///   an option of no command is an error naming the file (a typo); such a variable only draws a warning
///   (the environment is shared with other programs).
enum JobSettings {
    static let commands: [String: ParsableCommand.Type] = [
        "train": Train.self, "simulate": Simulate.self, "coordinator": CoordinatorCommand.self,
        "worker": WorkerCommand.self, "eval": Eval.self
    ]
    static let fileVariable = "TETHER_CONFIG"
    /// Variables Tether sets for itself.
    static let ownVariables: Set<String> = [
        fileVariable, ProcessLifetime.parentVariable, SecurityOptions.keyVariable, SampleAudit.variable, BLASCore.detectedVariable,
        HugePages.optOutVariable, "TETHER_TEST_KILL_DURING_WRITE", "TETHER_TEST_SLOW_WRITE"
    ]

    /// `arguments` (without the program name) with the job file's and the environment's settings
    /// inserted after the command's name.
    static func expand(_ arguments: [String], environment: [String: String]) throws -> [String] {
        guard let command = arguments.first, let type = commands[command] else { return arguments }
        let given = Array(arguments.dropFirst())
        if given.contains("--help") || given.contains("-h") { return arguments }
        let known = KnownOptions(help: Tether.helpMessage(for: type, columns: 10_000))
        let others = commands.filter { $0.key != command }.values.map { KnownOptions(help: Tether.helpMessage(for: $0, columns: 10_000)) }
        let anyCommand = others.reduce(known.options.union(known.flags)) { $0.union($1.options).union($1.flags) }
        /// A setting this command lacks: ignored when another command has it, else an error (a job
        /// file's typo) or a warning (a variable).
        func lacking(_ key: String, source: String, fatal: Bool) throws -> [String] {
            let name = key.replacingOccurrences(of: "_", with: "-")
            if known.options.contains(name) || known.flags.contains(name) || anyCommand.contains(name) { return [] }
            let message = known.unknown(name, source: source, command: command)
            if fatal { throw ValidationError(message) }
            FileHandle.standardError.write(Data("tether: ignoring \(message)\n".utf8))
            return []
        }
        var fromFile: [String] = []
        if let path = configPath(given) ?? environment[fileVariable] {
            fromFile = try settings(inFile: path, command: command).flatMap { key, value in
                try known.arguments(key, value, source: "\(path): key \"\(key)\"", command: command)
                    ?? lacking(key, source: "\(path): key \"\(key)\"", fatal: true)
            }
        }
        var fromEnvironment: [String] = []
        // An empty variable is unset (compose passes `${TETHER_X:-}` of an unset X as empty).
        for (name, value) in environment.sorted(by: { $0.key < $1.key })
        where name.hasPrefix("TETHER_") && !ownVariables.contains(name) && !value.isEmpty {
            let key = name.dropFirst("TETHER_".count).lowercased().replacingOccurrences(of: "_", with: "-")
            fromEnvironment +=
                try known.arguments(key, value, source: "environment variable \(name)", command: command)
                ?? lacking(key, source: "environment variable \(name)", fatal: false)
        }
        return [command] + fromFile + fromEnvironment + Self.attachNegativeValues(given, options: known.options)
    }

    /// `--lr -1` as `--lr=-1`: the parser would take `-1` for a flag and report a missing value, where
    /// the user gave a value that its own check should refuse (or accept).
    static func attachNegativeValues(_ arguments: [String], options: Set<String>) -> [String] {
        var out: [String] = []
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            if a.hasPrefix("--"), options.contains(String(a.dropFirst(2))), i + 1 < arguments.count,
                arguments[i + 1].hasPrefix("-"), Double(arguments[i + 1]) != nil
            {
                out.append(a + "=" + arguments[i + 1])
                i += 2
            } else {
                out.append(a)
                i += 1
            }
        }
        return out
    }

    /// The value of `--config FILE` or `--config=FILE`.
    static func configPath(_ arguments: [String]) -> String? {
        for (i, a) in arguments.enumerated() {
            if a == "--config", i + 1 < arguments.count { return arguments[i + 1] }
            if a.hasPrefix("--config=") { return String(a.dropFirst("--config=".count)) }
        }
        return nil
    }

    /// The file's top-level settings and those of `command`'s group, in file order (TetherJobFile).
    static func settings(inFile path: String, command: String) throws -> [(String, Any)] {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ValidationError("job file \(path): cannot read it (\(error.localizedDescription))")
        }
        do { return try JobFile.settings(text: text, path: path, command: command, commands: Set(commands.keys)) } catch {
            throw ValidationError("\(error)")
        }
    }

    /// The options and flags a command defines, read from the option lines of its help (one line each
    /// at 10,000 columns, each starting with its own name): a name in another option's text is prose,
    /// not a definition (eval's --data help mentions --schema).
    struct KnownOptions {
        var options: Set<String> = [], flags: Set<String> = [], invertible: Set<String> = []

        init(help: String) {
            let pattern = try! NSRegularExpression(
                pattern: #"^\s+(?:-[A-Za-z], )?--([a-z0-9][a-z0-9-]*)(/--no-[a-z0-9-]+)?( <[^>]+>)?(?:\s|$)"#, options: [.anchorsMatchLines]
            )
            let ns = help as NSString
            for m in pattern.matches(in: help, range: NSRange(location: 0, length: ns.length)) {
                let name = ns.substring(with: m.range(at: 1))
                if m.range(at: 2).location != NSNotFound {
                    invertible.insert(name); flags.insert(name)
                } else if m.range(at: 3).location != NSNotFound {
                    options.insert(name)
                } else {
                    flags.insert(name)
                }
            }
            flags.subtract(["help", "version"])
            options.remove("config")
        }

        /// `--key value`, `--key` or `--no-key` for one setting; nil for a name the command lacks.
        func arguments(_ rawKey: String, _ value: Any, source: String, command: String) throws -> [String]? {
            let key = rawKey.replacingOccurrences(of: "_", with: "-")
            let text = value as? String
            if options.contains(key) {
                if let b = value as? Bool { return ["--\(key)", String(b)] }
                return ["--\(key)", text ?? "\(value)"]
            }
            if flags.contains(key) {
                let on: Bool
                switch value {
                case let b as Bool: on = b
                case let s as String where ["true", "yes", "1", "on"].contains(s.lowercased()): on = true
                case let s as String where ["false", "no", "0", "off", ""].contains(s.lowercased()): on = false
                default: throw ValidationError("\(source): --\(key) is a flag; give true or false, not \"\(value)\"")
                }
                if on { return ["--\(key)"] }
                return invertible.contains(key) ? ["--no-\(key)"] : []
            }
            return nil
        }

        /// "SOURCE: tether COMMAND has no option --KEY (did you mean ...?)".
        func unknown(_ key: String, source: String, command: String) -> String {
            let all = (options.union(flags)).sorted()
            let near = all.filter { $0.hasPrefix(String(key.prefix(3))) || key.hasPrefix(String($0.prefix(3))) }
            return "\(source): tether \(command) has no option --\(key)"
                + (near.isEmpty ? "" : " (did you mean \(near.map { "--" + $0 }.joined(separator: ", "))?)")
        }
    }
}

/// `--config FILE` on the commands that read job files (JobSettings reads it before parsing).
struct JobFileOption: ParsableArguments {
    @Option(help: "A YAML job file of option settings (also TETHER_CONFIG); the command line and TETHER_* variables override it.")
    var config: String?
}
