import Testing
@testable import TetherTensor

@Suite struct BLASCoreTests {
    @Test func aPreAVX2ChoiceIsReplacedByWhatTheCPUHas() {
        #expect(BLASCore.replacement(chosen: "Prescott", vectorLevel: 2, environment: [:]) == "SkylakeX")
        #expect(BLASCore.replacement(chosen: "Prescott", vectorLevel: 1, environment: [:]) == "Haswell")
        #expect(BLASCore.replacement(chosen: "Sandybridge", vectorLevel: 2, environment: [:]) == "SkylakeX")
        #expect(BLASCore.replacement(chosen: "Prescott", vectorLevel: 0, environment: [:]) == nil)
    }

    @Test func aVectorChoiceOrTheUsersIsKept() {
        for core in ["Haswell", "SkylakeX", "Cooperlake", "SapphireRapids", "Zen", "ZEN", "haswell"] {
            #expect(BLASCore.replacement(chosen: core, vectorLevel: 2, environment: [:]) == nil, "\(core)")
        }
        #expect(BLASCore.replacement(chosen: "Prescott", vectorLevel: 2, environment: ["OPENBLAS_CORETYPE": "Prescott"]) == nil)
        #expect(BLASCore.replacement(chosen: "Prescott", vectorLevel: 2, environment: ["OPENBLAS_CORETYPE": ""]) == nil)
    }
}
