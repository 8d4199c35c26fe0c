package proc

import (
	"context"
	"os/exec"
	"strings"
	"testing"
)

func TestRunBinaryAndExitCode(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on PATH")
	}
	out, errb, err := RunBinary(context.Background(), sh, []string{"-c", `echo "$X"; echo oops >&2; exit 3`}, []string{"X=from-env"})
	if strings.TrimSpace(string(out)) != "from-env" || strings.TrimSpace(string(errb)) != "oops" || ExitCode(err) != 3 {
		t.Fatalf("stdout %q stderr %q err %v (exit %d)", out, errb, err, ExitCode(err))
	}
	if _, _, err := RunBinary(context.Background(), "/nonexistent/banger-tool", nil, nil); err == nil || ExitCode(err) != -1 {
		t.Fatalf("missing binary: err %v exit %d", err, ExitCode(err))
	}
}
