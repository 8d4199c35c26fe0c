package system

import "os"

// AtomicReplaceHooked is AtomicReplace with beforeFinal called between keeping the
// previous file and the final rename: the one moment an interruption tests must reach
// (`banger update`'s crash tests kill the process there). beforeFinal may be nil.
func AtomicReplaceHooked(newSrc, dst, suffixPrevious string, beforeFinal func()) error {
	return atomicReplace(newSrc, dst, suffixPrevious, func(from, to string) error {
		if beforeFinal != nil {
			beforeFinal()
		}
		return os.Rename(from, to)
	})
}
