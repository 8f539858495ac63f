import Testing
@testable import TetherTensor

@Suite struct BLASCoreTests {
    @Test func aPreAVX2ChoiceIsReplacedByWhatTheCPUHas() {
        #expect(BLASCore.replacement(chosen: "Prescott", vectorLevel: 2, environment: [:]) == "SkylakeX")
        #expect(BLASCore.replacement(chosen: "Prescott", vectorLevel: 1, environment: [:]) == "Haswell")
        #expect(BLASCore.replacement(chosen: "Sandybridge", vectorLevel: 2, environment: [:]) == "SkylakeX")
        #expect(BLASCore.replacement(chosen: "Prescott", vectorLevel: 0, environment: [:]) == nil)
    }

    @Test func anAVX2ChoiceOnAnAVX512CPUIsReplaced() {
        for core in ["Haswell", "Zen", "ZEN", "haswell"] {
            #expect(BLASCore.replacement(chosen: core, vectorLevel: 2, environment: [:]) == "SkylakeX", "\(core)")
            #expect(BLASCore.replacement(chosen: core, vectorLevel: 1, environment: [:]) == nil, "\(core)")
        }
    }

    @Test func aVectorChoiceOrTheUsersIsKept() {
        for core in ["SkylakeX", "Cooperlake", "SapphireRapids", "skylakex"] {
            #expect(BLASCore.replacement(chosen: core, vectorLevel: 2, environment: [:]) == nil, "\(core)")
        }
        #expect(BLASCore.replacement(chosen: "Prescott", vectorLevel: 2, environment: ["OPENBLAS_CORETYPE": "Prescott"]) == nil)
        #expect(BLASCore.replacement(chosen: "Prescott", vectorLevel: 2, environment: ["OPENBLAS_CORETYPE": ""]) == nil)
    }
}

@Suite struct HugePagesTests {
    @Test func theTunableIsAddedOnlyWhereTheKernelGivesHugePagesOnRequest() {
        let madvise = "always [madvise] never\n"
        #expect(HugePages.tunables(existing: nil, mode: madvise, environment: [:]) == "glibc.malloc.hugetlb=1")
        #expect(
            HugePages.tunables(existing: "glibc.malloc.arena_max=2", mode: madvise, environment: [:])
                == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
        // already set (either way), opted out, or no request needed or possible: left alone
        #expect(HugePages.tunables(existing: "glibc.malloc.hugetlb=0", mode: madvise, environment: [:]) == nil)
        #expect(HugePages.tunables(existing: nil, mode: madvise, environment: ["TETHER_HUGE_PAGES": "0"]) == nil)
        #expect(HugePages.tunables(existing: nil, mode: "[always] madvise never", environment: [:]) == nil)
        #expect(HugePages.tunables(existing: nil, mode: "always madvise [never]", environment: [:]) == nil)
        #expect(HugePages.tunables(existing: nil, mode: "", environment: [:]) == nil)
    }
}
