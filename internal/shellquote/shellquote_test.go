package shellquote

import (
	"os/exec"
	"strings"
	"testing"
)

// A shell must see each word exactly as given.
func TestJoinRoundTripsThroughSh(t *testing.T) {
	words := []string{"printf", "%s|", "plain", "two words", "it's", `"dq"`, "$HOME", "`x`", "a\\b", "", "*", "semi;colon", "new\nline", "#hash", "~tilde"}
	out, err := exec.Command("sh", "-c", Join(words)).Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Join(words[2:], "|") + "|"; string(out) != want {
		t.Fatalf("sh saw %q, want %q", out, want)
	}
	if Quote("/usr/bin/x") != "/usr/bin/x" || Quote("") != "''" {
		t.Fatalf("plain words: %q %q", Quote("/usr/bin/x"), Quote(""))
	}
}
