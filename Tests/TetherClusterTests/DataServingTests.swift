import Testing
@testable import TetherCluster
import TetherComm
import TetherData
import TetherTrain

@Suite struct DataServingTests {
    let train = ImageDataset(pixels: (0..<5 * 4).map { UInt8($0) }, labels: [0, 1, 2, 1, 0], height: 2, width: 2, classes: 3)
    let test = ImageDataset(pixels: [9, 9, 9, 9], labels: [2], height: 2, width: 2, classes: 3)

    @Test func theAnswerHoldsTheRequestedRowsInOrder() throws {
        let rows = DataServing.answer(.init(split: 0, indices: [3, 0, 3]), train: train, test: test)
        #expect(rows.error.isEmpty && rows.count == 5 && rows.height == 2 && rows.classes == 3)
        #expect(rows.pixels == [12, 13, 14, 15, 0, 1, 2, 3, 12, 13, 14, 15] && rows.labels == [1, 0, 1])
        // through the wire and back, then through the worker's source
        let source = ServedImages { request in
            let env = try Envelope(decoding: Envelope(jobID: "j", senderRank: -1, body: .dataRows(DataServing.answer(request, train: train, test: test))).encoded())
            guard case .dataRows(let r) = env.body else { throw ClusterError("not rows") }
            return r
        }
        #expect(try source.shape(.test) == ImageShape(count: 1, height: 2, width: 2, classes: 3))
        let fetched = try source.rows(.train, [4, 1])
        #expect(fetched.pixels == [16, 17, 18, 19, 4, 5, 6, 7] && fetched.labels == [0, 1])
    }

    @Test func aSampleOutsideTheSplitIsRefusedByName() {
        let rows = DataServing.answer(.init(split: 1, indices: [0, 1]), train: train, test: test)
        #expect(rows.error == "sample 1 requested of a test split of 1")
        let source = ServedImages { _ in rows }
        #expect(throws: ClusterError.self) { try source.rows(.test, [0, 1]) }
    }

    @Test func rowsThatDoNotMatchTheirShapeAreAWireError() throws {
        var bad = DataServing.answer(.init(split: 0, indices: [1]), train: train, test: test)
        bad.pixels.removeLast()
        let bytes = Envelope(jobID: "j", senderRank: -1, body: .dataRows(bad)).encoded()
        #expect(throws: WireError.self) { try Envelope(decoding: bytes) }
    }
}
