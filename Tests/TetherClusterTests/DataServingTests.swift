import Testing
@testable import TetherCluster
import TetherComm
import TetherMessages
import TetherData
import TetherTrain

@Suite struct DataServingTests {
    /// 5,000 one-pixel images: more than one request's worth of rows.
    let train = ImageDataset(
        pixels: (0..<5000).map { UInt8($0 % 251) }, labels: (0..<5000).map { Int32($0 % 3) }, height: 1, width: 1, classes: 3)
    let test = ImageDataset(pixels: [9, 9, 9, 9], labels: [2], height: 2, width: 2, classes: 3)

    /// A worker's source whose requests go through the wire format to `DataServing.answer` and back.
    func source(train: any ServableDataset, test: any ServableDataset) -> ServedData {
        ServedData { request in
            let env = try Envelope(
                decoding: Envelope(jobID: "j", senderRank: -1, body: .dataRows(DataServing.answer(request, train: train, test: test)))
                    .encoded())
            guard case .dataRows(let r) = env.body else { throw ClusterError("not rows") }
            return r
        }
    }

    @Test func rowsArriveInRequestOrderAcrossRequests() throws {
        let served = source(train: train, test: test)
        let wanted = Array((0..<5000).reversed().prefix(4500)) + [7, 7]
        let rows = try ImageDataset(shape: served.describe(.train).shape, rows: served.rows(.train, wanted))
        #expect(rows.pixels == wanted.map { UInt8($0 % 251) } && rows.labels == wanted.map { Int32($0 % 3) })
        let (count, shape) = try served.describe(.test)
        let empty = try ImageDataset(shape: shape, rows: [])
        #expect(count == 1 && empty.height == 2 && empty.count == 0)
    }

    @Test func tablesAndTokensSurviveTheirEncoding() throws {
        let table = TabularDataset(
            categoricalNames: ["a", "b"], numericNames: ["x"], crosses: [[0, 1]],
            categorical: [1, 2, 3, 4, .max, 6], numeric: [0.5, -1, .pi], labels: [1, 0, 1])
        let back = try TabularDataset(shape: table.encodedShape(), rows: table.encodedRows([2, 0]))
        #expect(back.categorical == [.max, 6, 1, 2] && back.numeric == [.pi, 0.5] && back.labels == [1, 1] && back.crosses == [[0, 1]])
        let text = TokenSequence(vocabulary: Vocabulary(words: ["<eos>", "<unk>", "a"]), tokens: [2, 0, 1, 2])
        let tokens = try TokenSequence(shape: text.encodedShape(), rows: text.encodedRows([3, 1]))
        #expect(tokens.tokens == [2, 0] && tokens.vocabulary == text.vocabulary)
    }

    @Test func badRequestsAndBadRowsAreNamed() throws {
        let answer = DataServing.answer(.init(split: 1, indices: [0, 1]), train: train, test: test)
        #expect(answer.error == "row 1 requested of a held-out split of 1")
        #expect(throws: ClusterError.self) { try source(train: train, test: test).rows(.test, [0, 1]) }
        // rows cut short, a label out of range, a token outside the vocabulary
        let rows = test.encodedRows([0])
        #expect(throws: DataError.self) { try ImageDataset(shape: test.encodedShape(), rows: Array(rows.dropLast())) }
        #expect(throws: DataError.self) { try ImageDataset(shape: test.encodedShape(), rows: Array(rows.dropLast()) + [7]) }
        let text = TokenSequence(vocabulary: Vocabulary(words: ["<eos>"]), tokens: [])
        #expect(throws: DataError.self) { try TokenSequence(shape: text.encodedShape(), rows: [5, 0, 0, 0]) }
    }
}
