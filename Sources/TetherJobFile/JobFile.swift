import Foundation
import Yams

/// A YAML job file's settings (tether's `--config FILE`): option names without dashes mapped to values,
/// optionally grouped under a command's name. Parsing only: which names a command knows is checked by
/// the CLI. Every failure is a `JobFileError` naming the file and the key.
public enum JobFile {
    /// The file's top-level settings and those of `command`'s group, in file order; groups of the other
    /// `commands` are skipped.
    public static func settings(text: String, path: String, command: String, commands: Set<String>) throws -> [(String, Any)] {
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch { throw JobFileError("job file \(path): not valid YAML: \(error)") }
        guard let root else { return [] }
        guard let mapping = root.mapping else { throw JobFileError("job file \(path): expected a mapping of option names to values") }
        var out: [(String, Any)] = []
        for (k, v) in mapping {
            guard let key = k.string else { throw JobFileError("job file \(path): a key is not a string") }
            if commands.contains(key) {
                guard key == command else { continue }
                guard let group = v.mapping else {
                    throw JobFileError("job file \(path): \"\(key)\" must be a mapping of option names to values")
                }
                for (gk, gv) in group {
                    guard let name = gk.string else { throw JobFileError("job file \(path): a key under \(key) is not a string") }
                    out.append((name, try value(gv, path: path, key: name)))
                }
            } else {
                out.append((key, try value(v, path: path, key: key)))
            }
        }
        return out
    }

    /// A scalar as its text (booleans as Bool), a list of scalars joined with commas.
    static func value(_ node: Node, path: String, key: String) throws -> Any {
        if let s = node.scalar {
            if s.style == .plain, let b = Bool.construct(from: s) { return b }
            return s.string
        }
        if let list = node.sequence {
            let items = list.compactMap(\.scalar?.string)
            guard items.count == list.count else {
                throw JobFileError("job file \(path): key \"\(key)\": a list may only hold plain values")
            }
            return items.joined(separator: ",")
        }
        // a model spec inline: its YAML text, which --model reads as a spec (ModelSpecFile)
        if key == "model", node.mapping != nil, let text = try? Yams.serialize(node: node) {
            do { _ = try ModelSpecFile.parse(text, name: "inline", source: "job file \(path): model") } catch {
                throw JobFileError("\(error)")
            }
            return text
        }
        throw JobFileError("job file \(path): key \"\(key)\" holds a mapping; give it a value or a list")
    }
}

public struct JobFileError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
