"""Procedural people with exact OpenPose-18 keypoints: the training data of the tiny model and the demo samples.

An identity is a look (skin tone; hair colour and style or a hat; a top that is solid, striped or two-tone, with
short or long sleeves; trousers, shorts or a skirt; shoes; build) and a scene (a plain or textured background,
sometimes a bench behind the person and an object in front of them). Each view draws the identity in a pose from
a varied prior: standing, walking, arms raised or out, hands on hips, three-quarter and side views, seated on the
bench, cut by the frame edge.

The figure is a 3-D stick model (figure units: standing height 1, y down, z toward the camera, origin at the
pelvis) seen by an orthographic camera. Its joints ARE the keypoints, so they are exact: a joint outside the
frame is missing, and so are the face points turned away from the camera (eyes, nose, ears by their facing).
Body parts are tapered capsules and convex polygons drawn back to front at a few times the output size and
box-filtered down (antialiasing); the coverage of the person's pixels not hidden by the object in front,
thresholded at 1/2, is the exact foreground mask.

Deterministic by seed: identity ``i`` of seed ``s`` draws from ``numpy.random.default_rng([s, i])``, so the
first N identities of a larger dataset are the same people.

    looks.py         the look and scene priors (colours, garments, build, backgrounds)
    poses.py         the pose prior
    figure.py        the 3-D figure: its dimensions and joints, posed in the camera frame
    rasterizer.py    one view drawn at a size: image, mask, keypoints, background
    dataset.py       make_dataset: the trainer's layout (image/ dwpose/ keypoints/ mask/ background/ train.json
                     test.json dataset.json)
    demo_samples.py  write_demo_samples: the shipped demo inputs
"""
