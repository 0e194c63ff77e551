"""What long commands show while they run (issue 32): the training bar with periodic evaluations' lines on a
terminal and in a pipe, and the episode display of `trpo eval`. What a terminal shows is replayed here from the
bytes written: a carriage return goes back to the line's start, ESC[K clears to its end."""

from __future__ import annotations

import io
import re

from trpo.logger import EpisodeProgress, Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(written: str) -> list[str]:
    """The lines a terminal shows after `written` (only \\r, \\n and ESC[K, as the displays write them)."""
    lines, line, col = [], "", 0
    for token in re.split(r"(\r|\n|\x1b\[K)", written):
        if token == "\r":
            col = 0
        elif token == "\n":
            lines.append(line)
            line, col = "", 0
        elif token == "\x1b[K":
            line = line[:col]
        else:
            line = line[:col] + token + line[col + len(token):]
            col += len(token)
    return [*lines, line] if line else lines


def test_a_note_on_a_terminal_gets_a_line_of_its_own_and_the_bar_goes_on_below() -> None:
    stream = Terminal()
    progress = Progress(total_steps=1000, stream=stream)
    progress.update(500, 12.5)
    note = "eval at step 500: mean return 21.00 +/- 3.00 over 2 episodes, new best"
    progress.note(note)
    progress.update(1000, 20.0)
    progress.close()
    shown = screen(stream.getvalue())
    assert len(shown) == 2 and shown[0] == note  # not garbled by the bar before or after it
    assert shown[1].startswith("[########################] 100% 1000/1000 steps") and "return 20.0" in shown[1]
    # Between the note and the next update, the bar is drawn again under the note.
    progress = Progress(total_steps=1000, stream=(stream := Terminal()))
    progress.update(500, 12.5)
    progress.note(note)
    assert screen(stream.getvalue()) == [note, progress.bar] and "500/1000 steps" in progress.bar


def test_a_note_in_a_pipe_is_a_plain_line_between_the_progress_lines() -> None:
    stream = io.StringIO()
    progress = Progress(total_steps=1000, stream=stream, interval=3600)
    progress.update(500, 12.5)
    progress.note("eval at step 500: mean return 21.00 +/- 3.00 over 2 episodes, new best")
    progress.update(1000, 20.0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "500/1000 steps" in lines[0] and lines[2].startswith("100%")
    assert lines[1] == "eval at step 500: mean return 21.00 +/- 3.00 over 2 episodes, new best"


def test_episode_progress_on_a_terminal_draws_a_bar_and_clears_it_for_the_result() -> None:
    stream = Terminal()
    display = EpisodeProgress(4, "frames", stream=stream, delay=0.0)
    display.update(1, 120)
    assert re.fullmatch(r"\[###### {18}\] 1/4 episodes  120 frames  [\d,.]+ frames/s  elapsed 00:00  ETA 00:00",
                        screen(stream.getvalue())[0])
    display.update(2, 240)  # within 0.2 s of the last redraw: not drawn again
    assert len(re.findall("episodes", stream.getvalue())) == 1
    display.close()
    assert screen(stream.getvalue()) == []  # the line is left empty for the result


def test_episode_progress_is_quiet_for_a_quick_evaluation_and_plain_in_a_pipe() -> None:
    quick = Terminal()
    display = EpisodeProgress(10, stream=quick)  # the bar waits a second; these steps take less
    for step in range(1, 50):
        display.update(step // 10, step)
    display.close()
    assert quick.getvalue() == ""
    piped = io.StringIO()
    display = EpisodeProgress(10, stream=piped, interval=0.0)
    display.update(3, 700)
    display.close()
    assert re.fullmatch(r"3/10 episodes  700 steps  [\d,.]+ steps/s  elapsed 00:00  ETA \d\d:\d\d\n",
                        piped.getvalue())
