import Foundation
import Testing
@testable import TetherData

func scratchDirectory(_ name: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("tether-data-\(name)-\(UUID())")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

@Suite struct TextCorpusTests {
    @Test func vocabularyRanksByCountThenBytesWithTheSpecialTokensFirst() {
        let lines: [Substring] = ["b a b", "c a b", "d"]
        let v = Vocabulary(counting: lines, size: 5)
        #expect(v.words == ["<eos>", "<unk>", "b", "a", "c"])
        #expect(v.encode(["a d b", "z"]) == [3, 1, 2, 0, 1, 0])
    }

    @Test func aFolderSkipsBinaryFilesAndDuplicateLinksAndSplitsDeterministically() throws {
        let dir = try scratchDirectory("corpus")
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = (0..<250).map { "line \($0) of the corpus" }.joined(separator: "\n")
        try text.write(to: dir.appendingPathComponent("a.txt"), atomically: true, encoding: .utf8)
        try Data([0x01, 0x00, 0xFF, 0x10]).write(to: dir.appendingPathComponent("a.dat"))
        try FileManager.default.createSymbolicLink(atPath: dir.appendingPathComponent("a.u8").path, withDestinationPath: "a.txt")
        let corpus = try TextCorpus(path: dir.path)
        #expect(corpus.files == [dir.path + "/a.txt"])
        // 250 lines: blocks of 100, the tenth block held out; too few blocks, so the last line is.
        #expect(corpus.trainLines.count + corpus.validationLines.count == 250)
        #expect(corpus.validationLines == ["line 249 of the corpus"])
        let again = try TextCorpus(path: dir.path)
        #expect(again.trainLines == corpus.trainLines)
    }

    @Test func anEmptyCorpusIsAClearError() throws {
        let dir = try scratchDirectory("empty")
        defer { try? FileManager.default.removeItem(at: dir) }
        try "  \n\n".write(to: dir.appendingPathComponent("blank.txt"), atomically: true, encoding: .utf8)
        #expect { try TextCorpus(path: dir.path) } throws: { "\($0)".contains("\(dir.path): the corpus is empty") }
        #expect { try TextCorpus(path: dir.path + "/missing") } throws: { "\($0)".contains("no such file") }
    }

    @Test func tokenStreamsFollowWordLanguageModelBatchify() {
        let s = TokenStreams((0..<23).map(Int32.init), columns: 2)  // 11 per stream, 1 dropped
        #expect(s.length == 11 && s.steps(bptt: 4) == 3)
        let w = s.window(step: 2, bptt: 4, streams: 0..<2)  // positions 8, 9 (the last has no target)
        #expect(w.steps == 2)
        #expect(w.inputs == [8, 19, 9, 20])
        #expect(w.targets == [9, 20, 10, 21])
    }
}

@Suite struct TabularDataTests {
    func write(_ text: String, _ name: String, in dir: URL) throws -> String {
        let url = dir.appendingPathComponent(name)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    @Test func theAdultPresetReadsBothFilesFormats() throws {
        let dir = try scratchDirectory("adult")
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try write(
            """
            |1x3 Cross validator
            39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K
            52, Self-emp-inc, 287927, HS-grad, 9, Married-civ-spouse, Exec-managerial, Wife, White, Female, 15024, 0, 40, United-States, >50K.

            """, "adult.test", in: dir)
        let d = try CSVReader.read(path, schema: .adult)
        #expect(d.count == 2 && d.fields == 8 && d.numericNames.count == 6)
        #expect(d.labels == [0, 1])
        #expect(d.numeric[0] == 39 && d.numeric[6] == 52)
        #expect(d.crosses == [[1, 3], [7, 3]])
        #expect(d.categorical[0] == TabularDataset.hash("State-gov".utf8))
    }

    @Test func aRowWithTheWrongNumberOfFieldsNamesFileAndLine() throws {
        let dir = try scratchDirectory("fields")
        defer { try? FileManager.default.removeItem(at: dir) }
        let schema = try TabularSchema.parse("columns a, b, y\ncategorical a\nnumeric b\nlabel y 1", file: "s")
        let path = try write("x,1,0\nx,2\n", "d.csv", in: dir)
        #expect { try CSVReader.read(path, schema: schema) } throws: { "\($0)" == "\(path):2: 2 fields, the schema has 3 columns" }
        let bad = try write("x,1,0\nx,1.5e,1\n", "n.csv", in: dir)
        #expect { try CSVReader.read(bad, schema: schema) } throws: { "\($0)" == "\(bad):2: column 2 (b): \"1.5e\" is not a number" }
    }

    /// A .tsv file splits on tabs, a `delimiter` line on what it names, and a target column reads as a
    /// number (a regression's), the same rows whichever the separator.
    @Test func tabsAndOtherDelimitersReadTheSameRows() throws {
        let dir = try scratchDirectory("tsv")
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = "columns a, b, y\ncategorical a\nnumeric b\ntarget y\n"
        let comma = try CSVReader.read(try write("x,1,2.5\nz,3,-1\n", "d.csv", in: dir), schema: TabularSchema.parse(text, file: "s"))
        let tab = try CSVReader.read(try write("x\t1\t2.5\nz\t3\t-1\n", "d.tsv", in: dir), schema: TabularSchema.parse(text, file: "s"))
        let semicolon = try CSVReader.read(
            try write("x;1;2.5\nz;3;-1\n", "d.txt", in: dir), schema: TabularSchema.parse(text + "delimiter semicolon\n", file: "s"))
        #expect(comma.target == [2.5, -1] && comma.numeric == [1, 3] && comma.labels == [0, 0])
        for other in [tab, semicolon] {
            #expect(other.categorical == comma.categorical && other.numeric == comma.numeric && other.target == comma.target)
        }
        #expect { try TabularSchema.parse(text + "delimiter space\n", file: "s") } throws: {
            "\($0)".contains("comma, tab, semicolon or pipe")
        }
    }

    @Test(arguments: [
        ("columns a, y\ncategorical a\nnumeric a\ntarget y\nlabel y 1", "s: the schema names both a label column"),
        ("columns a, y\ncategorical a, q\nlabel y 1", "s: categorical column \"q\" is not one of the columns (a, y)"),
        ("columns a, y\ncategorical a\nlabel z 1", "s: label column \"z\" is not one of the columns (a, y)"),
        ("columns a, b, y\ncategorical a\nnumeric b\nlabel y 1\ncross a, b", "s: cross column \"b\" is not categorical"),
        ("columns a, y\ncategorical a\nlabel y 1\nweights 3", "s:4: unknown directive \"weights\""),
        ("categorical a\nlabel y 1", "s: the schema names no columns")
    ])
    func schemaErrorsNameTheProblem(text: String, message: String) {
        #expect { try TabularSchema.parse(text, file: "s") } throws: { "\($0)".hasPrefix(message) }
    }

    @Test func syntheticClicksAreDeterministicAndCriteoShaped() {
        let a = SyntheticClicks.generate(rows: 500, seed: 3, heldOut: false)
        let b = SyntheticClicks.generate(rows: 500, seed: 3, heldOut: false)
        let held = SyntheticClicks.generate(rows: 500, seed: 3, heldOut: true)
        #expect(a.fields == 26 && a.numericNames.count == 13 && a.crosses.count == 25)
        #expect(a.categorical == b.categorical && a.labels == b.labels && a.numeric == b.numeric)
        #expect(a.categorical != held.categorical)
        let rate = Double(a.labels.reduce(0) { $0 + Int($1) }) / 500
        #expect(rate > 0.1 && rate < 0.6, "click rate \(rate)")
    }
}
