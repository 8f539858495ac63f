import Foundation

/// A word-level vocabulary: `<eos>` (id 0), `<unk>` (id 1), then the most frequent words of the
/// training text, most frequent first (ties in byte order), so the same text always gives the same ids.
public struct Vocabulary: Codable, Equatable, Sendable {
    public static let endOfSentence = "<eos>", unknown = "<unk>"
    public let words: [String]
    private let ids: [String: Int32]

    public init(words: [String]) {
        self.words = words
        ids = Dictionary(words.enumerated().map { ($1, Int32($0)) }, uniquingKeysWith: { a, _ in a })
    }

    /// The `size - 2` most frequent words of `lines` (whitespace-separated) with the two special tokens.
    public init(counting lines: [Substring], size: Int) {
        precondition(size >= 2)
        var counts: [Substring: Int] = [:]
        for line in lines { for w in line.split(whereSeparator: \.isWhitespace) { counts[w, default: 0] += 1 } }
        let ranked = counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
        let kept = ranked.lazy.map { String($0.key) }.filter { $0 != Self.endOfSentence && $0 != Self.unknown }.prefix(size - 2)
        self.init(words: [Self.endOfSentence, Self.unknown] + kept)
    }

    public var count: Int { words.count }
    public func id(_ word: Substring) -> Int32 { ids[String(word)] ?? 1 }

    /// Token ids of `lines`: each line's words then `<eos>` (PyTorch's word_language_model convention).
    public func encode(_ lines: [Substring]) -> [Int32] {
        var out: [Int32] = []
        for line in lines {
            for w in line.split(whereSeparator: \.isWhitespace) { out.append(id(w)) }
            out.append(0)
        }
        return out
    }

    enum CodingKeys: String, CodingKey { case words }
    /// A vocabulary from a checkpoint or the wire: `<eos>` and `<unk>` first, each word once.
    public init(from decoder: Decoder) throws {
        let words = try decoder.container(keyedBy: CodingKeys.self).decode([String].self, forKey: .words)
        guard words.count >= 2, words.count <= Int(Int32.max), words[0] == Self.endOfSentence, words[1] == Self.unknown else {
            throw DataError.invalid("a vocabulary of \(words.count) words must start with \(Self.endOfSentence) and \(Self.unknown)")
        }
        self.init(words: words)
        guard ids.count == words.count else { throw DataError.invalid("a vocabulary holds a word twice") }
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self); try c.encode(words, forKey: .words)
    }
}

/// Plain UTF-8 text for language modelling: one file, or every UTF-8 file under a folder (in path
/// order; binary files, such as fortune's .dat indexes, and duplicate links are skipped).
/// The lines are split deterministically: blocks of 100 lines, every tenth block held out for validation.
public struct TextCorpus: Sendable {
    public let trainLines: [Substring]
    public let validationLines: [Substring]
    public let files: [String]

    public static let blockLines = 100, validationEvery = 10

    public init(path: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { throw DataError.missingFile(path) }
        var candidates: [String] = []
        if isDirectory.boolValue {
            guard let walker = FileManager.default.enumerator(atPath: path) else {
                throw DataError.unreadable(file: path, reason: "cannot list the folder")
            }
            candidates = walker.compactMap { $0 as? String }.sorted().map { path + "/" + $0 }
        } else {
            candidates = [path]
        }
        var seen = Set<String>(), lines: [Substring] = [], used: [String] = []
        for file in candidates {
            let real = URL(fileURLWithPath: file).resolvingSymlinksInPath().path
            var dir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: real, isDirectory: &dir), !dir.boolValue, seen.insert(real).inserted else {
                continue
            }
            guard let data = FileManager.default.contents(atPath: real) else {
                throw DataError.unreadable(file: file, reason: "permission denied or unreadable")
            }
            // Binary files (a NUL byte, or not UTF-8) are skipped in a folder and refused when named alone.
            guard !data.contains(0), let text = String(data: data, encoding: .utf8) else {
                if isDirectory.boolValue { continue }
                throw DataError.invalid("\(file): not UTF-8 text")
            }
            used.append(file)
            lines += text.split(separator: "\n", omittingEmptySubsequences: true).filter { !$0.allSatisfy(\.isWhitespace) }
        }
        guard !lines.isEmpty else {
            throw DataError.invalid(
                "\(path): the corpus is empty (no UTF-8 text with a non-blank line\(isDirectory.boolValue ? " in any file of the folder" : ""))"
            )
        }
        files = used
        var train: [Substring] = [], validation: [Substring] = []
        for (i, line) in lines.enumerated() {
            if (i / Self.blockLines) % Self.validationEvery == Self.validationEvery - 1 {
                validation.append(line)
            } else {
                train.append(line)
            }
        }
        // A corpus too small for a held-out block keeps its last line for validation.
        if validation.isEmpty { validation = [train.removeLast()] }
        guard !train.isEmpty else {
            throw DataError.invalid("\(path): the corpus has a single line; a language model needs training and validation text")
        }
        (trainLines, validationLines) = (train, validation)
    }
}

/// A token stream laid out as PyTorch's word_language_model batchifies it: trimmed to a multiple of
/// `columns` and cut into `columns` contiguous streams, stream j being tokens [j L, (j+1) L). Step s reads
/// positions [s * bptt, s * bptt + len) of every stream, and predicts the token after each.
public struct TokenStreams: Sendable {
    public let columns: Int, length: Int
    /// (columns, length), row j = stream j.
    public let tokens: [Int32]

    public init(_ stream: [Int32], columns: Int) {
        precondition(columns > 0)
        self.columns = columns
        length = stream.count / columns
        tokens = Array(stream.prefix(length * columns))
    }

    /// Steps per pass with windows of `bptt` (the last one shorter).
    public func steps(bptt: Int) -> Int { length > 1 ? (length - 1 + bptt - 1) / bptt : 0 }

    /// Inputs and targets of step `s` for streams `streams` (a range of columns), time-major:
    /// (T, |streams|) each, T = min(bptt, length - 1 - s * bptt).
    public func window(step s: Int, bptt: Int, streams: Range<Int>) -> (inputs: [Int32], targets: [Int32], steps: Int) {
        let start = s * bptt, t = min(bptt, length - 1 - start)
        var inputs = [Int32](repeating: 0, count: t * streams.count), targets = inputs
        for i in 0..<t {
            for (k, j) in streams.enumerated() {
                inputs[i * streams.count + k] = tokens[j * length + start + i]
                targets[i * streams.count + k] = tokens[j * length + start + i + 1]
            }
        }
        return (inputs, targets, t)
    }
}
