"""The page: gradio's layout and events around Explorer (one attack per slider move) and
CurveJobs (the robustness curve), with the defence picker above both tabs (the defence, adaptive
or not, and the EOT draws apply to the explorer and to the curve). The only module of
fastadv.demo that imports gradio.

Every handler turns an error into a message in the page (the `message` box), so a bad upload or
a model that fails leaves the server serving. The explorer's events share one queue slot and the
sliders' events are `always_last`: while an attack runs, a newer slider value replaces the one
waiting instead of queueing behind it."""

from __future__ import annotations

import logging
import random

import gradio as gr

from ..defenses import format_comparison
from ..evaluation import format_report
from . import defense_choices, view
from .curve import CurveJobs
from .defense_choices import NO_DEFENSE
from .explorer import Explorer, Picture
from .registry import ATTACKS
from .uploads import ACCEPTED, UploadError, read_upload

log = logging.getLogger("fastadv.demo")
GALLERY = 20  # test images shown in the gallery
LIVE = {"concurrency_id": "explore", "concurrency_limit": 1, "show_progress": "hidden"}
IMAGE_HEIGHT = 220  # pixels: the three images, their top-5 and the numbers fit above the fold together
# the Markdown image of the README and docs/demo.md is taken from a page built here


def error_message(error: Exception) -> str:
    """The page's message for an error: its first line, named by its kind when it is no user
    error (a model that fails)."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, (ValueError, TypeError)):
        return f"**Error:** {text}"
    return f"**Error:** the model or attack failed ({type(error).__name__}: {text})"


def page_seed(value) -> int:
    """A seed field's value as a seed, or ValueError in one line (torch.Generator.manual_seed says
    "Overflow when unpacking long long" for 1e20)."""
    seed = float(value)
    if not (seed == int(seed) if seed == seed and abs(seed) != float("inf") else False) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1, got {value:g}")
    return int(seed)


class Page:
    """The page's handlers, without gradio's layout (the unit tests call them): each takes the
    current picture and the controls (attack, eps, steps, alpha, targeted, target, seed, defence,
    adaptive, EOT draws; the last three may be left out: no defence, not adaptive) and returns
    the outputs its event updates, an error as the message."""

    def __init__(self, explorer: Explorer) -> None:
        self.explorer = explorer
        named = explorer.class_names is not None and len(explorer.class_names) == explorer.classes
        self.names = list(explorer.class_names) if named else [str(k) for k in range(explorer.classes)]
        self.jobs = CurveJobs(explorer)

    def slider_for(self, attack: str, value: float = 0.0, old_max: float | None = None) -> dict:
        """The eps slider for `attack`: its norm's range; `value` rescaled from `old_max`."""
        choice = ATTACKS[attack]
        top = self.explorer.eps_max(choice.norm)
        scaled = value if old_max is None else value * top / old_max
        label = ("L2 budget eps (the attack finds its own distance)" if choice.minimal
                 else f"eps ({'L-inf' if choice.norm == 'linf' else 'L2'})")  # fmt: skip
        return gr.update(minimum=0, maximum=top, step=top / 300, value=round(min(scaled, top), 6), label=label)

    def show(self, picture: Picture, attack, eps, steps, alpha, targeted, target, seed, defense=NO_DEFENSE,
             adaptive=False, eot_samples=1) -> list:  # fmt: skip
        """The seven displays (clean, adversarial and perturbation pictures, top-5 before and
        after, the numbers, the message) for the picture and the controls."""
        try:
            if None in (seed, steps, target, eps, alpha, eot_samples):
                raise ValueError("eps, steps, alpha, target class, seed and EOT samples need a value")
            outcome = self.explorer.attack(picture, attack, float(eps), steps=int(steps), alpha=float(alpha),
                                           targeted=bool(targeted), target=int(target), seed=page_seed(seed),
                                           defense=defense or NO_DEFENSE, adaptive=bool(adaptive),
                                           eot_samples=int(eot_samples))  # fmt: skip
        except Exception as error:  # noqa: BLE001 - any failure is shown, the server keeps serving
            log.warning("attack failed", exc_info=True)
            return [None, None, None, None, None, "", error_message(error)]
        choice, names = ATTACKS[attack], self.names
        return [
            view.picture(outcome.clean), view.picture(outcome.adv),
            view.picture(view.perturbation(outcome.delta), frame=True),
            view.top_classes(outcome.clean_probs, names), view.top_classes(outcome.adv_probs, names),
            view.summary(outcome, names, attack=attack, eps=float(eps), norm=choice.norm, targeted=bool(targeted),
                         minimal=choice.minimal),
            "",
        ]  # fmt: skip

    def source_text(self, picture: Picture) -> str:
        label = "no label (an upload): the model's clean class is attacked" if picture.label is None else (
            f"class {self.names[picture.label]}")  # fmt: skip
        return f"**{picture.source}** · {label}"

    def _unchanged(self, message: str) -> list:
        return [gr.skip(), gr.skip(), gr.skip(), *[gr.skip()] * 6, message]

    def pick(self, index, *controls) -> list:
        """[picture, index, source, *displays] for test image `index`."""
        try:
            picture = self.explorer.picture(int(index))
        except (TypeError, ValueError) as error:
            return self._unchanged(error_message(error))
        return [picture, int(index), self.source_text(picture), *self.show(picture, *controls)]

    def pick_from_gallery(self, event: gr.SelectData, *controls) -> list:
        return self.pick(event.index, *controls)

    def pick_random(self, *controls) -> list:
        return self.pick(random.randrange(self.explorer.images.shape[0]), *controls)

    def upload(self, path, *controls) -> list:
        """[picture, index, source, *displays] for an uploaded file (the picture unchanged and
        the error as the message when it cannot be used)."""
        if path is None:  # the file was cleared
            return self._unchanged("")
        try:
            image, note = read_upload(path, self.explorer.shape[0], self.explorer.shape[1:])
        except UploadError as error:
            return self._unchanged(error_message(error))
        hint = self.background_hint(image)
        picture = Picture(image, None, f"upload {note}" + (f" ({hint})" if hint else ""))
        return [picture, gr.skip(), self.source_text(picture), *self.show(picture, *controls)]

    def data_background(self) -> str:
        """ "dark" or "light": the test images' background, by their median pixel."""
        return "dark" if float(self.explorer.images.median()) < 0.5 else "light"

    def expected_upload(self) -> str:
        """What an upload should look like for this model: its size, channels and background."""
        channels, height, width = self.explorer.shape
        kind = "grayscale" if channels == 1 else "colour"
        shade = {"dark": "light on a dark background", "light": "dark on a light background"}[self.data_background()]
        return f"the model was trained on {width}x{height} {kind} images, {shade}, as the test images here"

    def background_hint(self, image) -> str:
        """A warning when the upload's background is the opposite of the data's, else ""."""
        data = self.data_background()
        upload = "dark" if float(image.median()) < 0.5 else "light"
        if upload == data:
            return ""
        return f"its background is {upload}, the model's images have {data} ones: invert it for a fair test"

    def change_attack(self, picture, old_attack, attack, eps, steps, alpha, targeted, target, seed, *defence) -> list:
        """[eps slider, steps, alpha, targeted, the attack shown, *displays] for a new attack
        (`defence`: the defence, adaptive and EOT controls)."""
        choice = ATTACKS[attack]
        slider = self.slider_for(attack, float(eps or 0), self.explorer.eps_max(ATTACKS[old_attack].norm))
        targeted = bool(targeted) and choice.targeted_ok
        shown = self.show(picture, attack, slider["value"], steps, alpha, targeted, target, seed, *defence)
        takes_alpha = choice.iterative and not choice.minimal
        return [slider, gr.update(interactive=choice.iterative), gr.update(interactive=takes_alpha),
                gr.update(value=targeted, interactive=choice.targeted_ok), attack, *shown]  # fmt: skip

    def curve(self, attack_names, eps_text, samples, steps, seed, defense=NO_DEFENSE, adaptive=False,
              eot_samples=1, progress=gr.Progress(track_tqdm=True)) -> list:  # noqa: B008  # fmt: skip
        """[plot, table, report.json, message] of the robustness curve behind the chosen defence,
        adaptive or not (evaluate's progress bar is tracked into the page's)."""
        try:
            try:
                eps = [float(part) for part in str(eps_text).replace(";", ",").split(",") if part.strip()]
            except ValueError:
                raise ValueError(f"eps grid: expected comma-separated numbers, got {eps_text!r}") from None
            if any(not e >= 0 for e in eps):
                raise ValueError("eps grid: values must be numbers >= 0")
            attacks = [ATTACKS[name].curve_name for name in attack_names or []]
            if eot_samples is None:
                raise ValueError("EOT samples need a value")
            defense, adaptive, eot_samples = defense or NO_DEFENSE, bool(adaptive), int(eot_samples)
            result = self.jobs.run(attacks, eps, steps=int(steps), samples=int(samples), seed=page_seed(seed),
                                   defense=defense, adaptive=adaptive, eot_samples=eot_samples,
                                   progress=True)  # fmt: skip
        except Exception as error:  # noqa: BLE001
            log.warning("curve failed", exc_info=True)
            return [gr.skip(), gr.skip(), gr.skip(), error_message(error)]
        note = "from the cache" if result.cached else "computed"
        command = "fastadv eval" + (f" --defense {defense}" if defense != NO_DEFENSE else "") + (
            f" --adaptive --eot-samples {eot_samples}" if adaptive else "")  # fmt: skip
        report = result.report
        runs = report.get("defenses", [report])  # with a defence: the bare model's run, then the defended one's
        table = "\n\n".join(f"{run['defense']}:\n{format_report(run)}" if "defense" in run else format_report(run)
                            for run in runs)  # fmt: skip
        if "comparison" in report:  # as fastadv eval prints it: the side-by-side table below
            table += "\n\n" + format_comparison(report["comparison"])
        return [result.plot_path, f"```\n{table}\n```", result.report_path,
                f"{note}: {report['samples']} samples, the report `{command}` writes"]  # fmt: skip


def build_app(explorer: Explorer, defense: str = NO_DEFENSE, adaptive: bool = False,
              eot_samples: int = 1) -> gr.Blocks:  # fmt: skip
    """The page (gradio Blocks) for `explorer`, with the defence picker set to `defense` (a spec
    of `fastadv eval --defense`), `adaptive` and `eot_samples`: launch it, or serve() does."""
    page = Page(explorer)
    names, linf_max = page.names, explorer.eps_max("linf")

    with gr.Blocks(title="fastadv epsilon explorer", analytics_enabled=False) as app:
        gr.Markdown(f"## fastadv epsilon explorer\nmodel: {explorer.model_name} · data: {explorer.data_name} "
                    f"({explorer.images.shape[0]} images {'x'.join(map(str, explorer.shape))})")  # fmt: skip
        first = explorer.picture(0)
        picture = gr.State(first)
        shown_attack = gr.State("FGSM")
        with gr.Row():
            defense_box = gr.Radio(
                defense_choices.choices(defense), value=defense, elem_id="defense",
                label="defence (as fastadv eval --defense): the model attacked is behind it",
            )  # fmt: skip
            adaptive_box = gr.Checkbox(
                adaptive, elem_id="adaptive", label="adaptive attack (BPDA through the transforms; EOT if random)"
            )  # fmt: skip
            eot = gr.Slider(
                1, max(20, eot_samples), value=eot_samples, step=1, elem_id="eot",
                label="EOT samples (adaptive attacks on a random defence: gradients averaged per step)",
            )  # fmt: skip
        with gr.Tab("Explorer"):
            with gr.Row():
                with gr.Column():
                    gallery = gr.Gallery(
                        [(view.picture(explorer.images[i]), f"#{i}: {names[int(explorer.labels[i])]}")
                         for i in range(min(GALLERY, explorer.images.shape[0]))],
                        label="test images (click one)", columns=5, height=300, allow_preview=False,
                        elem_id="gallery",
                    )  # fmt: skip
                    with gr.Row():
                        index = gr.Number(0, label=f"test image # (0-{explorer.images.shape[0] - 1}, Enter)",
                                          precision=0, elem_id="index")  # fmt: skip
                        random_button = gr.Button("random image", elem_id="random")
                    upload_box = gr.File(label=f"or upload a PNG / JPEG: {page.expected_upload()}",
                                         file_types=list(ACCEPTED), type="filepath", elem_id="upload")  # fmt: skip
                    source = gr.Markdown(page.source_text(first), elem_id="source")
                with gr.Column():
                    attack = gr.Radio(list(ATTACKS), value="FGSM", label="attack", elem_id="attack")
                    eps = gr.Slider(0, linf_max, value=0, step=linf_max / 300, label="eps (L-inf)", elem_id="eps")
                    steps = gr.Slider(1, 100, value=20, step=1, label="steps", interactive=False, elem_id="steps")
                    alpha = gr.Slider(0.01, 1, value=0.25, step=0.01, interactive=False, elem_id="alpha",
                                      label="alpha: the step size, as a fraction of eps")  # fmt: skip
                    with gr.Row():
                        targeted = gr.Checkbox(False, label="targeted", elem_id="targeted")
                        target = gr.Dropdown([(n, k) for k, n in enumerate(names)], value=min(1, len(names) - 1),
                                             label="target class", elem_id="target")  # fmt: skip
                        seed = gr.Number(0, label="seed", precision=0, minimum=0, elem_id="seed")
            message = gr.Markdown(elem_id="message")
            # the numbers beside the images, not under them: both in view on a laptop's screen
            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    with gr.Row():
                        clean_image = gr.Image(label="clean", interactive=False, height=IMAGE_HEIGHT, elem_id="clean")
                        adv_image = gr.Image(label="adversarial", interactive=False, height=IMAGE_HEIGHT,
                                             elem_id="adversarial")  # fmt: skip
                        delta_image = gr.Image(label="perturbation (amplified to the full range)", interactive=False,
                                               height=IMAGE_HEIGHT, elem_id="perturbation")  # fmt: skip
                    with gr.Row():
                        clean_top = gr.Label(num_top_classes=5, label="top-5 before", elem_id="top-clean")
                        adv_top = gr.Label(num_top_classes=5, label="top-5 after", elem_id="top-adversarial")
                with gr.Column(scale=2):
                    summary = gr.Markdown(elem_id="summary")
        with gr.Tab("Robustness curve"):
            curve_names = [name for name, choice in ATTACKS.items() if choice.curve_name]
            with gr.Row():
                curve_attacks = gr.CheckboxGroup(
                    curve_names, value=curve_names[:2], elem_id="curve-attacks",
                    label="attacks (a cascade, in this order, as fastadv eval runs them)",
                )  # fmt: skip
                grid = [round(linf_max * k / 6, 4) for k in range(1, 7)]
                curve_eps = gr.Textbox(", ".join(map(str, grid)), label="eps grid", elem_id="curve-eps")
            with gr.Row():
                samples = gr.Slider(1, explorer.images.shape[0], value=min(200, explorer.images.shape[0]), step=1,
                                    label="samples (the first N of the data)", elem_id="curve-samples")  # fmt: skip
                curve_steps = gr.Slider(1, 100, value=20, step=1, label="steps", elem_id="curve-steps")
                curve_seed = gr.Number(0, label="seed", precision=0, minimum=0, elem_id="curve-seed")
            go = gr.Button("compute the curve", variant="primary", elem_id="curve-go")
            curve_message = gr.Markdown(elem_id="curve-message")
            with gr.Row():
                curve_plot = gr.Image(label="robust accuracy against eps", type="filepath", interactive=False,
                                      elem_id="curve-plot")  # fmt: skip
                curve_file = gr.File(label="report.json (as fastadv eval writes it)", elem_id="curve-report")
            curve_table = gr.Markdown(elem_id="curve-table")

        controls = [attack, eps, steps, alpha, targeted, target, seed, defense_box, adaptive_box, eot]
        displays = [clean_image, adv_image, delta_image, clean_top, adv_top, summary, message]
        picked = [picture, index, source, *displays]
        app.load(page.show, [picture, *controls], displays, **LIVE)
        gallery.select(page.pick_from_gallery, controls, picked, **LIVE)
        index.submit(page.pick, [index, *controls], picked, **LIVE)
        random_button.click(page.pick_random, controls, picked, **LIVE)
        upload_box.upload(page.upload, [upload_box, *controls], picked, **LIVE)
        attack.change(page.change_attack, [picture, shown_attack, *controls],
                      [eps, steps, alpha, targeted, shown_attack, *displays], **LIVE)  # fmt: skip
        for slider in (eps, steps, alpha, eot):
            slider.input(page.show, [picture, *controls], displays, trigger_mode="always_last", **LIVE)
        for control in (targeted, target, defense_box, adaptive_box):
            control.input(page.show, [picture, *controls], displays, **LIVE)
        seed.submit(page.show, [picture, *controls], displays, **LIVE)
        go.click(page.curve, [curve_attacks, curve_eps, samples, curve_steps, curve_seed, defense_box, adaptive_box,
                              eot], [curve_plot, curve_table, curve_file, curve_message],
                 concurrency_id="curve", concurrency_limit=1)  # fmt: skip
    return app


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 7860, **preselected) -> None:
    """Builds the page (`preselected`: build_app's defense, adaptive, eot_samples) and serves it
    until interrupted: no share link, no analytics, gradio's own frontend files (nothing is
    fetched from the internet)."""
    app = build_app(explorer, **preselected)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False, quiet=True,
               footer_links=["gradio"])  # fmt: skip
