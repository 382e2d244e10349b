"""Synthetic fundus photographs for exercising the pipeline without the Kaggle/EyePACS data.

`render_fundus` paints one colour fundus photograph procedurally (numpy + PIL only, no torch):
black surround, circular vignetted field of view, orange-red textured retina, optic disc with
cup on the nasal side, macula with a foveal reflex, a branching artery/vein tree emanating from
the disc with arcades around the macula, and diabetic-retinopathy lesions whose number, size and
kind grow with the grade (microaneurysms, dot/blot/flame haemorrhages, hard exudates, cotton-wool
spots, venous beading, neovascularisation, pre-retinal haemorrhage, laser scars).  Every image
also gets random anatomy and camera variation (exposure, tint, gamma, blur, rotation, field of
view offset and cropping, rim glare, sensor noise, JPEG quality), independent of the grade.

`synthesize` writes a data set in the lab, Kaggle or APTOS layout, optionally as camera-sized
frames; output is byte-identical for the same arguments.  `write_preview` draws a contact
sheet, one row per grade.

Modules: `canvas` (coordinates, layers, compositing), `anatomy`, `vessels`, `lesions`,
`camera`, `render` (composes them into one square image), `sensor` (camera-sized frames),
`dataset` (grades per split, rendering jobs), `layouts` (file names and label tables),
`preview`, `checks` (the user's arguments).
"""

from retino.synth.dataset import GRADE_PRIORS, synthesize
from retino.synth.preview import write_preview
from retino.synth.render import render_fundus

__all__ = ["GRADE_PRIORS", "render_fundus", "synthesize", "write_preview"]
